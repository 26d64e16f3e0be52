//! Holds the kernel's cgroup-BPF static keys on for the whole guest run.
//!
//! The kernel runs a cgroup's BPF programs of one attach type only once its static key
//! for that type is on: the first program of the type attached anywhere turns it on,
//! the last one detached turns it off, and each turn rewrites the branches in the
//! kernel's text (`text_poke_bp`, with an int3 in place while it works). Every test
//! starts an agent that attaches its programs and takes them down at its end, so a run
//! rewrites those branches thousands of times. QEMU's multi-threaded TCG now and then
//! runs a stale translation of a rewritten branch on the other vCPU, and the guest dies
//! with `Oops: int3` (seen in `__inet_stream_connect` on 6.12.117, 66 tests into a whole
//! run, and on 7.2). That is the emulator's race, not the suite's, and a real CPU has no
//! such window; so the init attaches a program that allows everything, of each type the
//! agent uses, to an empty cgroup of its own, and keeps the links open until power-off.
//! The keys then stay on and the tests' attaches and detaches rewrite nothing.
use std::{
    fs::File,
    os::fd::{AsFd as _, OwnedFd},
};

use tollgate_bpf_sys::{link_create, prog_load};

const PROG_TYPE_CGROUP_SKB: u32 = 8;
const PROG_TYPE_CGROUP_SOCK: u32 = 9;
const PROG_TYPE_SOCK_OPS: u32 = 13;
const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;

/// (program type, attach type, name): every cgroup attach type the agent uses.
const TYPES: &[(u32, u32, &str)] = &[
    (PROG_TYPE_CGROUP_SKB, 1, "inet_egress"),
    (PROG_TYPE_CGROUP_SOCK, 2, "sock_create"),
    (PROG_TYPE_SOCK_OPS, 3, "sock_ops"),
    (PROG_TYPE_CGROUP_SOCK_ADDR, 10, "connect4"),
    (PROG_TYPE_CGROUP_SOCK_ADDR, 11, "connect6"),
    (PROG_TYPE_CGROUP_SOCK_ADDR, 14, "sendmsg4"),
    (PROG_TYPE_CGROUP_SOCK_ADDR, 15, "sendmsg6"),
    (PROG_TYPE_CGROUP_SOCK_ADDR, 19, "recvmsg4"),
    (PROG_TYPE_CGROUP_SOCK_ADDR, 20, "recvmsg6"),
    (PROG_TYPE_CGROUP_SOCK_ADDR, 29, "getpeername4"),
    (PROG_TYPE_CGROUP_SOCK_ADDR, 30, "getpeername6"),
    (PROG_TYPE_CGROUP_SOCK, 34, "sock_release"),
    // Linux 6.7+; older kernels refuse them, which is theirs to do.
    (PROG_TYPE_CGROUP_SOCK_ADDR, 49, "connect_unix"),
    (PROG_TYPE_CGROUP_SOCK_ADDR, 50, "sendmsg_unix"),
];

/// `r0 = 1; exit`: allow (and, for sock_ops, a return value nobody reads).
const ALLOW: [u64; 2] = [
    // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm 1.
    0xb7 | (1 << 32),
    // BPF_JMP | BPF_EXIT.
    0x95,
];

/// The links, open until the guest powers off. Returns what it held and what the
/// kernel refused (by name, with the error).
pub fn hold(cgroup_root: &str) -> (Vec<OwnedFd>, Vec<String>) {
    let dir = format!("{cgroup_root}/vm-init-static-keys");
    let cgroup = match std::fs::create_dir_all(&dir).and_then(|()| File::open(&dir)) {
        Ok(cgroup) => cgroup,
        Err(error) => return (Vec::new(), vec![format!("{dir}: {error}")]),
    };
    let mut held = Vec::new();
    let mut refused = Vec::new();
    let insns: Vec<u8> = ALLOW.iter().flat_map(|i| i.to_le_bytes()).collect();
    for &(prog_type, attach_type, name) in TYPES {
        let linked = prog_load(prog_type, attach_type, name, &insns)
            .map_err(|refused| refused.error)
            .and_then(|prog| link_create(prog.as_fd(), cgroup.as_fd(), attach_type));
        match linked {
            Ok(link) => held.push(link),
            Err(error) => refused.push(format!("{name}: {error}")),
        }
    }
    (held, refused)
}
