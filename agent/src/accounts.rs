//! Users and groups by name, from the system's databases (NSS).
use std::{ffi::CString, io};

use nix::unistd::{Gid, Group, Uid, User};

fn c_name(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

/// The gid of a group, or None if there is no such group.
pub fn gid_of(name: &str) -> io::Result<Option<u32>> {
    c_name(name)?;
    Ok(Group::from_name(name)?.map(|group| group.gid.as_raw()))
}

/// The uid of a user, or None if there is no such user.
pub fn uid_of(name: &str) -> io::Result<Option<u32>> {
    c_name(name)?;
    Ok(User::from_name(name)?.map(|user| user.uid.as_raw()))
}

/// A user a command can run as: ids, supplementary groups and home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

/// A user by name (or numeric uid), with the groups it belongs to; None if unknown.
pub fn account(name: &str) -> io::Result<Option<Account>> {
    let user = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid))?,
        Err(_) => {
            c_name(name)?;
            User::from_name(name)?
        }
    };
    let Some(user) = user else {
        return Ok(None);
    };
    let groups = nix::unistd::getgrouplist(&c_name(&user.name)?, user.gid)?;
    Ok(Some(Account {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups: groups.into_iter().map(Gid::as_raw).collect(),
        home: user.dir.to_string_lossy().into_owned(),
        name: user.name,
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
