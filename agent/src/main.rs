//! `tollgate`: the agent daemon and its command-line interface (the library's
//! [`tollgate::cli::main`]).

/// mimalloc instead of glibc's allocator: the data path allocates a statement's record
/// on a proxy thread and the recorder thread frees it, a cross-thread pattern glibc
/// handles with arena locks and consolidation (5% of the proxy threads' CPU at L7).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tollgate::cli::main()
}
