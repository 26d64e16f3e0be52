//! Tollgate's unix socket programs, in an object of their own: the eBPF loader that loads
//! the main object cannot parse `cgroup/connect_unix` sections or relocate kfunc calls,
//! so the agent loads this one itself. Its maps are the main object's pinned maps,
//! resolved by name.
//!
//! - `connect_unix` and `sendmsg_unix` (kernel 6.7+): decide a job's connect (or
//!   addressed datagram) to a unix socket path by the agent's verdicts, and report it.
#![no_std]
#![no_main]

#[expect(
    dead_code,
    reason = "shared with the main object; the unix programs use part of it"
)]
mod caller;
#[expect(
    dead_code,
    reason = "shared with the main object; the unix programs use part of it"
)]
mod maps;
mod unix;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
