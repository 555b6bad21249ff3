//! Spawning tokio tasks that inherit the spawner's context (B25).
//!
//! Each helper snapshots the caller's context at the call, as asyncio's `create_task` does:
//! later sets by the caller are invisible to the task, and the task's sets are invisible to
//! the caller.

use std::future::Future;

use tokio::task::JoinHandle;

use crate::context::Context;
use crate::future::FutureExt;

/// [`tokio::spawn`] in a snapshot of the caller's context, taken at the call.
///
/// # Panics
/// As [`tokio::spawn`]: when called outside a tokio runtime.
///
/// ```
/// # use context_core::{ContextVar, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct USER {}
/// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
/// # static USER: ContextVar<USER> = ContextVar::new("user");
/// # tokio::runtime::Builder::new_multi_thread().build().unwrap().block_on(async {
/// let _token = USER.set("ann");
/// let child = context_core::spawn(async {
///     let _ = USER.set("bob"); // stays in the child
///     USER.get()
/// });
/// let _later = USER.set("cid"); // too late for the child's snapshot
/// assert_eq!(child.await.unwrap(), Some("bob"));
/// assert_eq!(USER.get(), Some("cid"));
/// # });
/// ```
#[track_caller]
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future.in_current_context())
}

/// [`tokio::task::spawn_blocking`] with `f` running in a snapshot of the caller's context.
///
/// # Panics
/// As [`tokio::task::spawn_blocking`]: when called outside a tokio runtime.
///
/// ```
/// # use context_core::{ContextVar, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct USER {}
/// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
/// # static USER: ContextVar<USER> = ContextVar::new("user");
/// # tokio::runtime::Builder::new_multi_thread().build().unwrap().block_on(async {
/// let _token = USER.set("ann");
/// let seen = context_core::spawn_blocking(|| USER.get()).await.unwrap();
/// assert_eq!(seen, Some("ann"));
/// # });
/// ```
#[track_caller]
pub fn spawn_blocking<F, R>(f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    tokio::task::spawn_blocking(Context::current().run_later(f))
}

/// [`tokio::task::spawn_local`] in a snapshot of the caller's context, taken at the call.
///
/// # Panics
/// As [`tokio::task::spawn_local`]: when called outside a `LocalSet` (or a local runtime).
///
/// ```
/// # use context_core::{ContextVar, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct USER {}
/// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
/// # static USER: ContextVar<USER> = ContextVar::new("user");
/// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let local = tokio::task::LocalSet::new();
/// local.block_on(&rt, async {
///     let _token = USER.set("ann");
///     let seen = context_core::spawn_local(async { USER.get() }).await.unwrap();
///     assert_eq!(seen, Some("ann"));
/// });
/// ```
#[track_caller]
pub fn spawn_local<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    tokio::task::spawn_local(future.in_current_context())
}
