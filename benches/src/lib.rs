//! Fixtures shared by the benchmarks of `contextvars` (`cargo bench -p contextvars-benches`):
//! the variables they read and write, and contexts with 8 or 1,000 of them set.
//!
//! `scripts/bench-report` runs the benchmarks and the `CPython` script beside them and prints
//! the table in `benches/RESULTS.md`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use contextvars::{Context, ContextVar, Key, NoDefault, context_var};

/// The variable every benchmark reads and writes, declared as a user would.
#[context_var]
pub static REQUEST_ID: u64;

/// The key type shared by the filler variables.
///
/// Identity is the `ContextVar` value, not its key type (B2): each element of [`FILLERS`]
/// gets its own id on first use, so they are 1,000 distinct variables, stored in the map
/// exactly as 1,000 `#[context_var]` statics would be.
#[derive(Debug)]
pub enum Filler {}

impl Key for Filler {
    type Value = u64;
    type Default = NoDefault;
}

/// A variable with a default that the benchmark contexts never set: reading it is the common
/// "fall back to the default" case.
#[context_var]
pub static RETRIES: u64 = 3;

/// How many filler variables there are: enough for the 1,000-variable figures.
pub const FILLER_COUNT: usize = 1_000;

/// Distinct variables that fill a context up to the size a benchmark wants.
pub static FILLERS: [ContextVar<Filler>; FILLER_COUNT] =
    [const { ContextVar::new("filler") }; FILLER_COUNT];

tokio::task_local! {
    /// The `tokio::task_local!` peer of [`REQUEST_ID`].
    pub static TASK_REQUEST_ID: u64;
}

/// A context with `n` variables set, [`REQUEST_ID`] (to 7) among them.
///
/// [`REQUEST_ID`] gets its id before the fillers, as a variable read on every request would;
/// in a context of 1,000 it then sits at depth two of the trie, like most keys.
///
/// # Panics
/// If `n` is 0 or more than `FILLER_COUNT + 1`.
#[must_use]
pub fn context_with(n: usize) -> Context {
    assert!(
        (1..=FILLER_COUNT + 1).contains(&n),
        "between 1 and {} variables",
        FILLER_COUNT + 1
    );
    let mut ctx = Context::new().with_value(&REQUEST_ID, 7);
    for (value, var) in (0_u64..).zip(&FILLERS[..n - 1]) {
        ctx = ctx.with_value(var, value);
    }
    assert_eq!(ctx.len(), n);
    ctx
}

/// A future that is never ready: each poll measures only the cost of polling it, and what a
/// wrapper adds to that.
#[derive(Debug, Default)]
pub struct Pending;

impl Future for Pending {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<()> {
        Poll::Pending
    }
}

/// A future that is never ready and reads [`REQUEST_ID`] on every poll, as a request handler
/// that logs would.
#[derive(Debug, Default)]
pub struct PendingReadingVar;

impl Future for PendingReadingVar {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<()> {
        std::hint::black_box(REQUEST_ID.get());
        Poll::Pending
    }
}

/// [`PendingReadingVar`] for the task-local peer.
#[derive(Debug, Default)]
pub struct PendingReadingTaskLocal;

impl Future for PendingReadingTaskLocal {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<()> {
        std::hint::black_box(TASK_REQUEST_ID.try_with(|id| *id).ok());
        Poll::Pending
    }
}
