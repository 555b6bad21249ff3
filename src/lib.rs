//! Context variables for async Rust: Python's `contextvars` (PEP 567), typed and checked by
//! the compiler.
//!
//! # The problem
//!
//! A service needs to know, deep in any call stack, which request, tenant, user or trace it
//! is working for. Passing that through every function is noise. A global or a
//! `thread_local!` leaks between the tasks that share a worker thread.
//! `tokio::task_local!` cannot be set without a scope, has no defaults, is not inherited by
//! spawned tasks and panics when unset. This crate gives each task, thread and request its
//! own *context*, inherited where you ask for it and never leaked where you do not.
//!
//! # A complete example
//!
//! ```
//! use contextvars::context_var;
//!
//! #[context_var]
//! static REQUEST_ID: u64; // no default: `get` returns `Option<u64>`
//!
//! #[context_var]
//! static USER: String = String::from("guest"); // default, evaluated once, lazily
//!
//! async fn handle(id: u64, user: &str) -> String {
//!     let _request = REQUEST_ID.scoped(id); // undone when the guard drops
//!     let _user = USER.scoped(user.to_string());
//!     tokio::task::yield_now().await; // values survive awaits, on any worker thread
//!     // A task spawned with `contextvars::spawn` inherits a snapshot of the context.
//!     contextvars::spawn(async { deep_in_the_stack() }).await.unwrap()
//! }
//!
//! fn deep_in_the_stack() -> String {
//!     format!("request {:?} for {}", REQUEST_ID.get(), USER.get())
//! }
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! // Concurrent requests, each in a context of its own.
//! let a = contextvars::spawn(handle(1, "ann"));
//! let b = contextvars::spawn(handle(2, "bob"));
//! assert_eq!(a.await.unwrap(), "request Some(1) for ann");
//! assert_eq!(b.await.unwrap(), "request Some(2) for bob");
//! // The caller's context was never touched.
//! assert_eq!((REQUEST_ID.get(), USER.get()), (None, "guest".to_string()));
//! # });
//! ```
//!
//! # Variables
//!
//! [`#[context_var]`](macro@context_var) on a `static` declares a [`ContextVar`]. Each
//! variable is a type of its own, named like the static, so the compiler catches what
//! Python reports at run time:
//!
//! - `get()` returns `T` for a variable with a default and `Option<T>` for one without;
//!   [`try_get`](ContextVar::try_get) gives a [`LookupError`] naming the variable;
//!   [`get_or`](ContextVar::get_or) takes a fallback; [`with`](ContextVar::with) borrows.
//! - [`set`](ContextVar::set) returns a [`Token`]; [`reset`](ContextVar::reset) takes it by
//!   value (a second use does not compile) and only for its own variable (`Token<USER>`
//!   does not reset `REQUEST_ID`: a type error).
//! - [`scoped`](ContextVar::scoped) returns a [`ScopeGuard`] that restores its variable,
//!   and only that one, on drop, also on panic, exactly as resetting a token would;
//!   [`sync_scope`](ContextVar::sync_scope) and [`scope`](ContextVar::scope) are the
//!   closure and future forms, named as in `tokio::task_local!`. As there, `scope`'s future
//!   takes its copy of the context when first polled, so nested scopes compose:
//!   `B.scope(b, A.scope(a, future))` sees both values.
//!
//! # Contexts
//!
//! A [`Context`] maps variables to values. [`Context::current()`] (or [`copy_context()`])
//! snapshots the current one in O(1), however many variables are set: the map is persistent
//! and shared, and values sit behind `Arc`, so nothing is copied.
//! [`run`](Context::run) runs a closure in a context and keeps what it sets there; it takes
//! `&mut self`, so a context cannot be entered twice at once. [`wrap`](Context::wrap) carries
//! a context into any thread pool or executor, and
//! [`with_value`](Context::with_value) builds a context with overrides in one expression.
//!
//! # Async
//!
//! Within one future, values set before an `.await` are there after it. Futures and streams
//! run in a context with [`FutureExt::with_context`] and [`FutureExt::in_current_context`];
//! [`spawn`], [`spawn_blocking`] and [`spawn_local`] start a tokio task in a snapshot of the
//! caller's context taken at the call, as asyncio's `create_task` does. Later sets on
//! either side are invisible to the other.
//!
//! [`#[preserve_context]`](macro@preserve_context) on an `async fn` captures the caller's
//! context when the function is *called*, not when the future is first polled, so a future
//! made inside a request and spawned later still sees the request's values.
//!
//! ## Values are dropped inside their context
//!
//! Every value a context holds is dropped inside that context: when a task ends (or is
//! aborted), when a request served through the tower layer ends, when
//! [`spawn_blocking`]'s closure returns, when a [`Context`] is dropped, wherever that
//! happens. So a value's `Drop` (a pooled connection returning itself, a metrics recorder,
//! a span) may read variables, and may set them: what it sets is discarded with the
//! context, and nothing panics. Values go one at a time, and while one is dropped the
//! others not yet dropped are still readable.
//!
//! A task's values are dropped inside the task when it ends, before its output is handed
//! over: a value whose `Drop` panics makes the task's [`JoinHandle`] report a panic, as a panic
//! in its body does, and the task's other values are still dropped, inside it. A dropped
//! [`Context`] likewise drops all its values and then raises the first such panic in the code
//! that dropped it. No such panic ever aborts the process: under `contextvars::hooks`, where a
//! value can outlive its owner in a task spawned with plain `tokio::spawn` and go only when
//! that task has already handed over its output, the panic hook prints the panic and it goes
//! no further.
//!
//! ## Tasks spawned without a context (the safety rule)
//!
//! A task started with plain `tokio::spawn` (say, a server's connection task) has no context
//! of its own, and the worker thread's context belongs to whatever ran there before. So in
//! such a task every variable reads as unset (or its default), [`Context::current()`] is
//! empty, and [`set`](ContextVar::set) panics with a message that names the fix: spawn with
//! [`contextvars::spawn`](spawn), wrap the future with
//! [`.in_current_context()`](FutureExt::in_current_context), or use
//! [`scope`](ContextVar::scope). One task can never see another's values this way.
//! ([`try_set`](ContextVar::try_set) returns the error instead of panicking.)
//!
//! A context belongs to the task that entered it: a task spawned without a context is kept
//! out even when it is polled while another context is current, say by a `LocalSet` inside
//! a context's future, or by a runtime driven inside [`Context::run`]. The same holds for
//! `tokio::task::spawn_blocking` (use [`spawn_blocking`] instead).
//!
//! Code outside runtime tasks (plain threads, the future given to `block_on` and so
//! `#[tokio::main]`'s body) uses the thread's own context, as Python does.
//!
//! Other executors (async-std, smol, futures' `block_on` on a pool) are not detected: their
//! tasks share the worker thread's context unless you wrap them with
//! [`.in_current_context()`](FutureExt::in_current_context), which you should.
//!
//! ## Automatic flow into every task (feature `hooks`)
//!
//! With tokio's runtime hooks (an unstable tokio API: build with
//! `RUSTFLAGS="--cfg tokio_unstable"` and the `hooks` feature), every task of a runtime, however
//! it is spawned (plain `tokio::spawn`, `Handle::spawn` from any thread, a `JoinSet`, a server's
//! connection tasks, any library's own spawns), reads a snapshot of its spawner's context. A
//! task spawned with plain `tokio::spawn` reads it and cannot write to it: writes need a
//! context the code entered (`contextvars::spawn`, `scope`, `Context::run`, the tower layer),
//! since a server's connection task, say, serves many requests one after the other, and
//! nothing else tells them apart. `contextvars::hooks::install_writable` gives asyncio's rule
//! instead, for runtimes whose every server runs behind the tower layer.
//! [`#[contextvars::main]`](macro@main) and
//! [`#[contextvars::test]`](macro@test) are
//! `#[tokio::main]` and `#[tokio::test]` with the hooks installed;
//! `contextvars::hooks::install(&mut builder)` installs them on a runtime you build by hand.
//! Where tokio runs no hook (`tokio::task::spawn_blocking`, `LocalSet` tasks, futures dropped at
//! runtime shutdown), the safety rule above still holds. Long-lived tasks started from inside a
//! request should not keep its values forever: start them with
//! `contextvars::hooks::spawn_without_context` or inside `contextvars::hooks::suppress_flow`.
//! The module `contextvars::hooks` explains each of these.
//!
//! # Concurrency inside one task
//!
//! The branches of `tokio::join!`, `tokio::select!`, `futures::future::join_all` and
//! `FuturesUnordered` are polled by one task, so they share its context: what one branch
//! sets, the others read after their next `.await`, and so does the code after the join.
//! Python's `asyncio.gather` gives each coroutine a copy of the context; to do the same,
//! give each branch a context of its own, in any of these ways:
//!
//! - **`gather`**: [`gather`] runs futures concurrently, each in its own copy of the
//!   caller's context, and returns their outputs in order: `asyncio.gather` in one call.
//! - **`join!`**: wrap each branch, `tokio::join!(a.in_current_context(),
//!   b.in_current_context())`, or give each its value with [`scope`](ContextVar::scope):
//!   `tokio::join!(USER.scope(1, a), USER.scope(2, b))`.
//! - **`select!`**: wrap each branch with [`.in_current_context()`](FutureExt::in_current_context);
//!   a winner's sets then stay in its branch too. Unwrapped, a losing branch's
//!   [`ScopeGuard`] restores only its own variable when it is dropped, so the winner's sets
//!   of other variables stay.
//! - **`join_all` / `FuturesUnordered`**: push `fut.in_current_context()`, or call
//!   [`#[preserve_context]`](macro@preserve_context) functions, whose futures capture the
//!   caller's context at the call.
//!
//! ```
//! use contextvars::context_var;
//!
//! #[context_var]
//! static USER: u32;
//!
//! async fn handle(user: u32) -> Option<u32> {
//!     let _ = USER.set(user); // the token is dropped: the value stays
//!     tokio::task::yield_now().await; // the other branches run and set theirs
//!     USER.get()
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let seen = contextvars::gather([handle(1), handle(2), handle(3)]).await;
//! assert_eq!(seen, [Some(1), Some(2), Some(3)]);
//! assert_eq!(USER.get(), None); // no branch's set reached the caller
//! # });
//! ```
//!
//! # Threads
//!
//! A thread from `std::thread::spawn` starts with an empty context, as in Python.
//! [`thread::spawn`] and [`thread::Builder`] start it in a copy of the spawner's.
//!
//! A thread pool's workers were started long before the job, so the job brings its context
//! along. [`run_in_executor`] does it for any pool and awaits the result (Python's
//! `loop.run_in_executor` with `copy_context().run`): `submit` is how the pool takes a boxed
//! job, and a panic in the job or a job the pool drops comes back as a [`JobError`].
//!
//! ```
//! use contextvars::context_var;
//!
//! #[context_var]
//! static TENANT: &str = "none";
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let _tenant = TENANT.scoped("acme");
//! // Here a thread per job; with rayon, `|job| rayon::spawn(job)`.
//! let report = contextvars::run_in_executor(
//!     |job| drop(std::thread::spawn(job)),
//!     || format!("report for {}", TENANT.get()),
//! );
//! assert_eq!(report.await.unwrap(), "report for acme");
//! # });
//! ```
//!
//! For a pool you call synchronously, [`Context::wrap`] makes the job by hand.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub use context_core::*;
// Named again, under the feature that brings them, so that the docs show the feature and a
// build without it says "the item is gated behind the `tower` feature" where it cannot find
// `contextvars::tower`.
#[cfg(feature = "baggage")]
#[cfg_attr(docsrs, doc(cfg(feature = "baggage")))]
#[doc = include_str!("../docs/baggage.md")]
pub mod baggage {
    pub use context_core::baggage::*;
}
#[cfg(feature = "opentelemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
pub use context_core::opentelemetry;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
#[doc = include_str!("../docs/tower.md")]
pub mod tower {
    pub use context_core::tower::*;
}
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
#[doc = include_str!("../docs/tracing.md")]
pub mod tracing {
    pub use context_core::tracing::*;
}
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use context_core::{JoinHandle, spawn, spawn_blocking, spawn_local};
#[doc = include_str!("../docs/context_var.md")]
pub use context_macros::context_var;

#[doc = include_str!("../docs/preserve_context.md")]
pub use context_macros::preserve_context;

#[doc = include_str!("../docs/main.md")]
pub use context_macros::main;

#[doc = include_str!("../docs/test.md")]
pub use context_macros::test;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

/// The README's examples, compiled as doctests so that they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The tower and tracing guides' examples, compiled whatever the features (the tests enable
/// the runtime's `tower` and `tracing` features); with the features, the modules' own docs
/// run them.
#[cfg(all(doctest, not(feature = "tower")))]
#[doc = include_str!("../docs/tower.md")]
struct TowerDoctests;

#[cfg(all(doctest, not(feature = "tracing")))]
#[doc = include_str!("../docs/tracing.md")]
struct TracingDoctests;

/// The baggage guide's examples, compiled whatever the features (the tests enable the
/// runtime's `baggage` feature).
#[cfg(doctest)]
#[doc = include_str!("../docs/baggage.md")]
struct BaggageDoctests;
