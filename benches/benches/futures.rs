//! Futures side by side: the per-poll cost of a context-wrapped future against a bare one,
//! tokio's `TaskLocalFuture` and the other crates' wrappers, spawning with a context against
//! `tokio::spawn` and the other crates' ways to hand theirs to a task, and calling a
//! context-preserving `async fn`; `gather` of 10,000 sleeping futures (alone, and sharing 4
//! permits) beside `futures::future::join_all`.
//!
//! Benchmark ids are the operations of `instructions.rs`; `scripts/bench-report` reads both.
//! Rename all three together.

#[macro_use]
mod peers;
mod workloads;

// The values that fill the peers' contexts: 8-value contexts only.
declare_fillers!(7);

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll, Waker};

use contextvars::FutureExt;
use contextvars_benches::{
    Pending, PendingReadingTaskLocal, PendingReadingVar, REQUEST_ID, TASK_REQUEST_ID, context_with,
};
use criterion::Criterion;
use peers::{Peer, dcontext_with, enter, inherit_future, otel_context_with, spawn_and_await};
use workloads::{BRANCHES, Combinator};

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
        "contextvars",
        Pending.with_context(context_with(8)),
    );
    bench_poll(&mut group, "task_local", TASK_REQUEST_ID.scope(7, Pending));
    bench_poll(
        &mut group,
        "opentelemetry",
        opentelemetry::context::FutureExt::with_context(Pending, otel_context_with(8)),
    );
    bench_poll(
        &mut group,
        "dcontext",
        dcontext::ContextFutureExt::attach(Pending, dcontext_with(8)),
    );
    bench_poll(
        &mut group,
        "inherit_task_local",
        enter(Peer::InheritTaskLocal, 8, || inherit_future(Pending)),
    );
    // The same, with the inner future reading the variable on every poll.
    bench_poll(
        &mut group,
        "contextvars_get",
        PendingReadingVar.with_context(context_with(8)),
    );
    bench_poll(
        &mut group,
        "task_local_get",
        TASK_REQUEST_ID.scope(7, PendingReadingTaskLocal),
    );
    group.finish();
}

fn spawn(c: &mut Criterion) {
    let mut group = c.benchmark_group("spawn");
    group.bench_function("tokio", |b| {
        b.iter_custom(|iters| {
            spawn_and_await(Peer::Contextvars, iters, || {
                tokio::spawn(async { black_box(7_u64) })
            })
        });
    });
    group.bench_function("contextvars", |b| {
        b.iter_custom(|iters| {
            spawn_and_await(Peer::Contextvars, iters, || {
                contextvars::spawn(async { black_box(7_u64) })
            })
        });
    });
    // The task-local way to hand a value to a task: a scope around its future.
    group.bench_function("task_local", |b| {
        b.iter_custom(|iters| {
            spawn_and_await(Peer::Contextvars, iters, || {
                tokio::spawn(TASK_REQUEST_ID.scope(7, async { black_box(7_u64) }))
            })
        });
    });
    group.bench_function("opentelemetry", |b| {
        b.iter_custom(|iters| {
            spawn_and_await(Peer::Opentelemetry, iters, || {
                tokio::spawn(opentelemetry::context::FutureExt::with_current_context(
                    async { black_box(7_u64) },
                ))
            })
        });
    });
    group.bench_function("dcontext", |b| {
        b.iter_custom(|iters| {
            spawn_and_await(Peer::Dcontext, iters, || {
                tokio::spawn(dcontext::ContextFutureExt::fork(async { black_box(7_u64) }))
            })
        });
    });
    group.bench_function("inherit_task_local", |b| {
        b.iter_custom(|iters| {
            spawn_and_await(Peer::InheritTaskLocal, iters, || {
                tokio::spawn(inherit_future(async { black_box(7_u64) }))
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

/// A whole gather of `BRANCHES` branches per iteration, beside `join_all` of the same.
fn gather(c: &mut Criterion) {
    for (workload, run) in [
        (
            "gather_sleepers",
            workloads::sleepers as fn(Combinator) -> usize,
        ),
        ("gather_4_permits", workloads::permits),
    ] {
        let mut group = c.benchmark_group(workload);
        for (name, combinator) in [
            ("contextvars", Combinator::Gather),
            ("join_all", Combinator::JoinAll),
        ] {
            assert_eq!(run(combinator), BRANCHES);
            group.bench_function(format!("{name}/{BRANCHES}"), |b| {
                b.iter(|| run(combinator));
            });
        }
        group.finish();
    }
}

fn main() {
    peers::verify();
    let mut criterion = Criterion::default().configure_from_args();
    poll(&mut criterion);
    spawn(&mut criterion);
    preserve(&mut criterion);
    gather(&mut criterion);
    criterion.final_summary();
}
