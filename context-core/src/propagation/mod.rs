//! Propagation: carrying a context to where code runs later or elsewhere. Futures and
//! streams (`future`), concurrent branches of one task (`gather`), tokio tasks (`task`),
//! threads (`thread`) and thread pools (`executor`). Built on the API.

pub(crate) mod executor;
pub(crate) mod future;
pub(crate) mod gather;
#[cfg(feature = "tokio")]
pub(crate) mod task;
pub mod thread;
