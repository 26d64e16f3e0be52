//! Users and groups by name, from the system's databases (NSS).
use std::{ffi::CString, io};

fn c_name(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

/// The gid of a group, or None if there is no such group.
pub fn gid_of(name: &str) -> io::Result<Option<u32>> {
    let name = c_name(name)?;
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero `group` is a valid out-parameter for getgrnam_r.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and the buffer length is its real size.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut group,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok((!found.is_null()).then_some(group.gr_gid))
}

/// The uid of a user, or None if there is no such user.
pub fn uid_of(name: &str) -> io::Result<Option<u32>> {
    let name = c_name(name)?;
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero `passwd` is a valid out-parameter for getpwnam_r.
    let mut passwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and the buffer length is its real size.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut passwd,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok((!found.is_null()).then_some(passwd.pw_uid))
}

/// A user a command can run as: ids, supplementary groups and home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
    pub home: String,
}

/// A user by name (or numeric uid), with the groups it belongs to; None if unknown.
pub fn account(name: &str) -> io::Result<Option<Account>> {
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero `passwd` is a valid out-parameter for getpw*_r.
    let mut passwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let rc = match name.parse::<u32>() {
        // SAFETY: every pointer is valid for the call and the buffer length is its size.
        Ok(uid) => unsafe {
            libc::getpwuid_r(
                uid,
                &mut passwd,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut found,
            )
        },
        Err(_) => {
            let c = c_name(name)?;
            // SAFETY: as above.
            unsafe {
                libc::getpwnam_r(
                    c.as_ptr(),
                    &mut passwd,
                    buffer.as_mut_ptr(),
                    buffer.len(),
                    &mut found,
                )
            }
        }
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if found.is_null() {
        return Ok(None);
    }
    // SAFETY: getpw*_r filled passwd with NUL-terminated strings in `buffer`.
    let (user, home) = unsafe {
        (
            std::ffi::CStr::from_ptr(passwd.pw_name).to_owned(),
            std::ffi::CStr::from_ptr(passwd.pw_dir)
                .to_string_lossy()
                .into_owned(),
        )
    };
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: `groups` has room for `n` entries; getgrouplist writes at most that many.
        let rc = unsafe {
            libc::getgrouplist(user.as_ptr(), passwd.pw_gid, groups.as_mut_ptr(), &mut n)
        };
        if rc >= 0 {
            groups.truncate(n.max(0) as usize);
            break;
        }
        if groups.len() > 65_536 {
            return Err(io::Error::other("too many groups"));
        }
        groups.resize((n.max(0) as usize).max(groups.len() * 2), 0);
    }
    Ok(Some(Account {
        name: user.to_string_lossy().into_owned(),
        uid: passwd.pw_uid,
        gid: passwd.pw_gid,
        groups,
        home,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_have_their_groups() {
        let root = account("root").unwrap().expect("root");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0));
        assert_eq!(
            account("0").unwrap().map(|a| a.name),
            Some("root".to_owned())
        );
        assert_eq!(account("no-such-user-here").unwrap(), None);
    }

    #[test]
    fn root_exists_and_nonsense_does_not() {
        assert_eq!(uid_of("root").unwrap(), Some(0));
        assert_eq!(gid_of("root").unwrap(), Some(0));
        assert_eq!(uid_of("no-such-user-tollgate").unwrap(), None);
        assert_eq!(gid_of("no-such-group-tollgate").unwrap(), None);
    }
}
