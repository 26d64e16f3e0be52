//! `tollgate`: the agent daemon and its command-line interface.
mod accounts;
mod admin;
mod agent;
mod bpf;
mod cgroup;
mod cli;
mod config;
mod control;
mod dns;
mod enforce;
mod enroll;
mod events;
mod features;
mod identity;
mod jobs;
mod kernel_path;
mod leave;
mod metrics;
mod postgres;
mod proc_info;
mod proxy;
mod record;
mod sockets;
mod udp;
mod unix;

/// mimalloc instead of glibc's allocator: the data path allocates a statement's record
/// on a proxy thread and the recorder thread frees it, a cross-thread pattern glibc
/// handles with arena locks and consolidation (5% of the proxy threads' CPU at L7).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
