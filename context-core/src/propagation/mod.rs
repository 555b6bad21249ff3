//! Propagation: carrying a context to where code runs later or elsewhere. Futures and
//! streams (`future`), scopes of one variable (`scope`), concurrent branches of one task
//! (`gather`), tokio tasks (`task`), threads (`thread`), thread pools (`executor`), and every
//! task of a runtime through tokio's hooks (`hooks`). Built on the API.

pub(crate) mod executor;
pub(crate) mod future;
pub(crate) mod gather;
#[cfg(all(feature = "hooks", tokio_unstable))]
pub mod hooks;
pub(crate) mod scope;
#[cfg(feature = "tokio")]
pub(crate) mod task;
pub mod thread;
