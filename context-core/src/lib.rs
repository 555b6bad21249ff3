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
//! counts. See `map.rs` and `current.rs`.

#![forbid(unsafe_code)]

// tokio's runtime hooks exist only in its unstable API.
#[cfg(all(feature = "hooks", not(tokio_unstable)))]
compile_error!(
    "the `hooks` feature of contextvars uses tokio's runtime hooks, an unstable tokio API: \
     build with RUSTFLAGS=\"--cfg tokio_unstable\" (for example in .cargo/config.toml: \
     [build] rustflags = [\"--cfg\", \"tokio_unstable\"]), or turn the feature off"
);

mod context;
mod current;
mod error;
mod future;
mod guard;
#[cfg(all(feature = "hooks", tokio_unstable))]
pub mod hooks;
mod map;
#[cfg(feature = "tokio")]
mod task;
pub mod thread;
mod token;
#[cfg(feature = "tower")]
pub mod tower;
#[cfg(feature = "tracing")]
pub mod tracing;
mod var;

pub use context::{Context, Iter, ValueRef, copy_context};
pub use error::{LookupError, ResetError, SetError};
pub use future::{FutureExt, WithContext};
pub use guard::ScopeGuard;
#[cfg(feature = "tokio")]
pub use task::{spawn, spawn_blocking, spawn_local};
pub use token::Token;
pub use var::{ContextVar, DefaultKind, Key, NoDefault, WithDefault};
