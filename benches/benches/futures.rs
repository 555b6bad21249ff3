//! Futures side by side: the per-poll cost of a context-wrapped future against a bare one and
//! tokio's `TaskLocalFuture`, spawning with a context against `tokio::spawn`, and calling a
//! context-preserving `async fn`.
//!
//! Group and function names are read by `scripts/bench-report`; rename both together.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use contextvars::FutureExt;
use contextvars_benches::{
    Pending, PendingReadingTaskLocal, PendingReadingVar, REQUEST_ID, TASK_REQUEST_ID, context_with,
};
use criterion::Criterion;

/// Polls `future` once per iteration with a waker that does nothing: the figure is the cost of
/// one poll.
fn bench_poll<F: Future>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    future: F,
) {
    let mut future = pin!(future);
    let mut cx = TaskContext::from_waker(Waker::noop());
    group.bench_function(name, |b| b.iter(|| future.as_mut().poll(&mut cx)));
    assert!(future.as_mut().poll(&mut cx).is_pending());
}

fn poll(c: &mut Criterion) {
    let mut group = c.benchmark_group("poll");
    bench_poll(&mut group, "bare", Pending);
    bench_poll(
        &mut group,
        "with_context",
        Pending.with_context(context_with(8)),
    );
    bench_poll(
        &mut group,
        "task_local_future",
        TASK_REQUEST_ID.scope(7, Pending),
    );
    // The same, with the inner future reading the variable on every poll.
    bench_poll(
        &mut group,
        "with_context_get",
        PendingReadingVar.with_context(context_with(8)),
    );
    bench_poll(
        &mut group,
        "task_local_future_get",
        TASK_REQUEST_ID.scope(7, PendingReadingTaskLocal),
    );
    group.finish();
}

/// Spawns and awaits `iters` trivial tasks one after the other on a current-thread runtime,
/// from inside a context with 8 variables set.
fn spawn_loop<F, J>(iters: u64, spawn: F) -> Duration
where
    F: Fn() -> J,
    J: Future,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    context_with(8).run(|| {
        runtime.block_on(async {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(spawn().await);
            }
            start.elapsed()
        })
    })
}

fn spawn(c: &mut Criterion) {
    let mut group = c.benchmark_group("spawn");
    group.bench_function("tokio_spawn", |b| {
        b.iter_custom(|iters| spawn_loop(iters, || tokio::spawn(async { black_box(7_u64) })));
    });
    group.bench_function("contextvars_spawn", |b| {
        b.iter_custom(|iters| spawn_loop(iters, || contextvars::spawn(async { black_box(7_u64) })));
    });
    // The task-local way to hand a value to a task: a scope around its future.
    group.bench_function("tokio_spawn_task_local_scope", |b| {
        b.iter_custom(|iters| {
            spawn_loop(iters, || {
                tokio::spawn(TASK_REQUEST_ID.scope(7, async { black_box(7_u64) }))
            })
        });
    });
    group.finish();
}

async fn plain(x: u64) -> u64 {
    black_box(std::future::ready(x).await)
}

#[contextvars::preserve_context]
async fn preserved(x: u64) -> u64 {
    black_box(std::future::ready(x).await)
}

/// Calls an `async fn` and polls the future it returns to completion.
fn call_to_completion<F: Future<Output = u64>>(future: F) -> u64 {
    let mut future = pin!(future);
    let mut cx = TaskContext::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(value) => value,
        Poll::Pending => unreachable!("the benchmarked functions never wait"),
    }
}

fn preserve(c: &mut Criterion) {
    let mut group = c.benchmark_group("preserve");
    context_with(8).run(|| {
        group.bench_function("plain_async_fn", |b| {
            b.iter(|| call_to_completion(plain(black_box(7))));
        });
        group.bench_function("in_current_context", |b| {
            b.iter(|| call_to_completion(plain(black_box(7)).in_current_context()));
        });
        group.bench_function("preserve_context", |b| {
            b.iter(|| call_to_completion(preserved(black_box(7))));
        });
        assert_eq!(
            call_to_completion(async { REQUEST_ID.get().unwrap_or(0) }.in_current_context()),
            7
        );
    });
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    poll(&mut criterion);
    spawn(&mut criterion);
    preserve(&mut criterion);
    criterion.final_summary();
}
