//! Helpers shared by the behaviour suites. Each test crate uses some of them, hence the
//! `dead_code` allowance.

#![allow(dead_code)]

use std::any::Any;

/// A small deterministic generator for random interleavings (xorshift), so that a failure
/// replays with the same seed.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The message of a caught panic (`panic!` with a literal or with formatting).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(ToString::to_string))
        .unwrap_or_default()
}

/// A runtime with the context hooks: two workers, or the current thread; with the opt-in
/// writable inheritance (`install_writable`) or the default read-only one.
#[cfg(all(tokio_unstable, feature = "hooks"))]
pub(crate) fn hooked_runtime(multi_thread: bool, writable: bool) -> tokio::runtime::Runtime {
    let mut builder = if multi_thread {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(2);
        builder
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all();
    if writable {
        contextvars::hooks::install_writable(&mut builder);
    } else {
        contextvars::hooks::install(&mut builder);
    }
    builder.build().unwrap()
}
