//! The runtime of [`contextvars`](https://docs.rs/contextvars): contexts, context variables,
//! tokens, scope guards, the future wrapper and the spawn helpers.
//!
//! Use it through the `contextvars` crate, which adds the `#[context_var]` and
//! `#[preserve_context]` macros and the user-facing documentation. The examples here declare
//! variables by hand, with [`ContextVar::new`] and a [`Key`] type, which is what
//! `#[context_var]` expands to.
//!
//! # Design
//!
//! A [`Context`] is a persistent map (a hash array mapped trie, as in `CPython`) from variable
//! ids to `Arc`ed values. Snapshots share the map, so taking one is a single reference-count
//! increment whatever the number of bindings; writes copy only the path to the key, and not
//! even that while nobody shares the map. Each thread holds the context being run in a
//! thread-local; entering and leaving a context swap it in and out without touching reference
//! counts. See `engine/map.rs` and `engine/current.rs`.

// A few `unsafe` blocks, where a benchmark showed they pay: `get`'s read cache, and `with`'s
// use of it, in `engine/current.rs`; small values stored in place, in `engine/map.rs`; a
// baggage header's plain entries taken as text once each of their bytes was found to be
// ASCII, in `integrations/baggage/header.rs`. Each has its `SAFETY` argument; CI runs the
// core's tests under Miri.
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// tokio's runtime hooks exist only in its unstable API.
#[cfg(all(feature = "hooks", not(tokio_unstable)))]
compile_error!(
    "the `hooks` feature of contextvars uses tokio's runtime hooks, an unstable tokio API: \
     build with RUSTFLAGS=\"--cfg tokio_unstable\" (for example in .cargo/config.toml: \
     [build] rustflags = [\"--cfg\", \"tokio_unstable\"]), or turn the feature off"
);

// The layers, each built on the ones before it: the engine knows nothing of the API, the
// API nothing of propagation, and so on. The imports below keep every file's `crate::map`,
// `crate::var`, … paths short.
mod api;
mod engine;
mod integrations;
mod propagation;

use api::carried;
pub use api::metadata;
use api::{context, error, guard, token, var};
use engine::{current, map, quiet};
#[cfg(feature = "tokio")]
use propagation::task;
use propagation::{executor, future, gather, scope};

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use integrations::tower;
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
pub use integrations::tracing;
pub use propagation::thread;

#[cfg(all(feature = "hooks", tokio_unstable))]
#[cfg_attr(docsrs, doc(cfg(feature = "hooks")))]
pub use propagation::hooks;

#[cfg(feature = "baggage")]
#[cfg_attr(docsrs, doc(cfg(feature = "baggage")))]
pub use integrations::baggage;

#[cfg(feature = "opentelemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
pub use integrations::opentelemetry;

pub use context::{Context, Iter, ValueRef, copy_context};
pub use error::{LookupError, ResetError, SetError};
pub use executor::{Job, JobError, RunInExecutor, run_in_executor};
pub use future::{FutureExt, WithContext};
pub use gather::{Gather, gather};
pub use guard::ScopeGuard;
pub use scope::Scope;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use task::{JoinHandle, spawn, spawn_blocking, spawn_local};
pub use token::Token;
pub use var::{ContextVar, DefaultKind, Key, NoDefault, WithDefault};

/// What `#[context_var]` writes in a variable's `Key` impl when the value type is `Copy`.
#[doc(hidden)]
pub use map::CopyProof;

/// What `#[context_var]` writes in a variable's `Key` impl when dropping a value of its type
/// runs no code that could see a context (a `String`, a `Vec<u8>`).
#[doc(hidden)]
pub use quiet::{QuietDrop, QuietDropProof};

/// Without the `baggage` feature, `#[context_var(baggage = "…")]` is one clear error, on
/// the attribute, that names the feature; the variable is still declared, without its claim.
#[cfg(not(feature = "baggage"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __baggage_feature {
    () => {
        ::core::compile_error!(
            "`#[context_var(baggage = \"...\")]` needs the `baggage` feature of `contextvars`: \
             `contextvars = { version = \"...\", features = [\"baggage\"] }`"
        );
    };
}

#[cfg(not(feature = "baggage"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __claim_baggage {
    ($($tokens:tt)*) => {};
}

/// Without the `tracing` feature, `#[context_var(log)]` is one clear error, on `log`, that
/// names the feature: nothing would put the variable on a log line.
#[cfg(not(feature = "tracing"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __log_feature {
    () => {
        ::core::compile_error!(
            "`#[context_var(log)]` puts the variable on the log lines of the formatters of \
             `contextvars::tracing`, which need the `tracing` feature of `contextvars`: \
             `contextvars = { version = \"...\", features = [\"tracing\"] }`"
        );
    };
}

/// With the feature, `#[context_var(log)]` needs nothing more.
#[cfg(feature = "tracing")]
#[doc(hidden)]
#[macro_export]
macro_rules! __log_feature {
    () => {};
}
