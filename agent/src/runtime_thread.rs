//! A named thread that runs one future on a current-thread tokio runtime of its own (the
//! proxy workers, the central shipper, the fleet link).
use std::{future::Future, io, thread::JoinHandle};

/// Spawns thread `name` running `make()`'s future to completion. A runtime that cannot
/// be built is logged, and the thread ends.
pub fn spawn<F, Fut>(name: String, make: F) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    std::thread::Builder::new().name(name).spawn(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(make()),
            Err(error) => {
                let thread = std::thread::current();
                tracing::error!(%error, thread = thread.name().unwrap_or("-"), "no tokio runtime for this thread");
            }
        }
    })
}
