//! The few system calls the init makes, wrapped.
use std::{ffi::CString, fs::File, io, os::fd::AsRawFd as _};

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    options: &str,
    flags: libc::c_ulong,
) -> io::Result<()> {
    let (source, target, fstype, options) = (
        cstring(source)?,
        cstring(target)?,
        cstring(fstype)?,
        cstring(options)?,
    );
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            options.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub fn finit_module(file: &File) -> io::Result<()> {
    let params = c"";
    // SAFETY: a valid descriptor and a NUL-terminated parameter string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// chroot and chdir, for a child between fork and exec.
pub fn chroot(dir: &str) -> io::Result<()> {
    let dir = cstring(dir)?;
    // SAFETY: NUL-terminated strings that outlive the calls.
    unsafe {
        if libc::chroot(dir.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// As PID 1: reaps every child (orphans included) until `pid` exits. True when it
/// exited with status 0.
pub fn reap_until(pid: u32) -> bool {
    loop {
        let mut status = 0;
        // SAFETY: waits for any child, with a valid status pointer.
        let reaped = unsafe { libc::waitpid(-1, &mut status, 0) };
        if reaped < 0 {
            return false;
        }
        if reaped as u32 == pid {
            return libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        }
    }
}

pub fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // reboot() returns only on failure; PID 1 must not exit.
    loop {
        std::thread::park();
    }
}
