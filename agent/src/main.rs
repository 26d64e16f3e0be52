//! `tollgate`: the agent daemon and its command-line interface.
mod accounts;
mod admin;
mod agent;
mod bpf;
mod cgroup;
mod cli;
mod config;
mod control;
mod enforce;
mod enroll;
mod identity;
mod jobs;
mod metrics;
mod postgres;
mod proc_info;
mod proxy;
mod record;

fn main() -> std::process::ExitCode {
    cli::main()
}
