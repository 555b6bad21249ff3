//! Synchronous operations side by side: `get`, `set` + `reset`, snapshots and `run`, for
//! `contextvars`, `tokio::task_local!` and `thread_local!`.
//!
//! Group and function names are read by `scripts/bench-report`; rename both together.

use std::cell::{Cell, RefCell};
use std::hint::black_box;
use std::sync::Arc;

use contextvars::Context;
use contextvars_benches::{REQUEST_ID, TASK_REQUEST_ID, context_with};
use criterion::Criterion;

thread_local! {
    static TLS_REFCELL: RefCell<Option<u64>> = const { RefCell::new(None) };
    static TLS_CELL: Cell<Option<u64>> = const { Cell::new(None) };
}

fn get(c: &mut Criterion) {
    let mut group = c.benchmark_group("get");
    for n in [8, 1_000] {
        let mut ctx = context_with(n);
        ctx.run(|| {
            assert_eq!(REQUEST_ID.get(), Some(7));
            group.bench_function(format!("contextvars/{n}"), |b| {
                b.iter(|| black_box(&REQUEST_ID).get());
            });
        });
    }
    // The thread's own context (plain threads, `block_on`'s root future), not an entered one.
    let token = REQUEST_ID.set(7);
    group.bench_function("contextvars_thread_context/1", |b| {
        b.iter(|| black_box(&REQUEST_ID).get());
    });
    REQUEST_ID.reset(token).expect("same context");
    // A task local's cost does not depend on how many others are set: each is its own slot.
    TASK_REQUEST_ID.sync_scope(7, || {
        group.bench_function("task_local", |b| {
            b.iter(|| black_box(&TASK_REQUEST_ID).get());
        });
    });
    TLS_REFCELL.set(Some(7));
    group.bench_function("thread_local_refcell", |b| {
        b.iter(|| black_box(&TLS_REFCELL).with_borrow(|v| *v));
    });
    TLS_CELL.set(Some(7));
    group.bench_function("thread_local_cell", |b| {
        b.iter(|| black_box(&TLS_CELL).get());
    });
    group.finish();
}

fn set_reset(c: &mut Criterion) {
    let mut group = c.benchmark_group("set_reset");
    let mut ctx = context_with(8);
    ctx.run(|| {
        group.bench_function("contextvars", |b| {
            b.iter(|| {
                let token = REQUEST_ID.set(black_box(8));
                REQUEST_ID.reset(token).expect("same context");
            });
        });
        group.bench_function("contextvars_scoped", |b| {
            b.iter(|| drop(REQUEST_ID.scoped(black_box(8))));
        });
        // What a child task's first `set` costs: the map is shared with a snapshot, so the
        // path to the key is copied. The snapshot's own cost is in the `current` group.
        group.bench_function("contextvars_after_snapshot", |b| {
            b.iter(|| {
                let snapshot = Context::current();
                let token = REQUEST_ID.set(black_box(8));
                REQUEST_ID.reset(token).expect("same context");
                snapshot
            });
        });
    });
    // The only way to set a task local is a scope around the code that sees it.
    group.bench_function("task_local_sync_scope", |b| {
        b.iter(|| TASK_REQUEST_ID.sync_scope(black_box(8), || {}));
    });
    group.bench_function("thread_local_refcell", |b| {
        b.iter(|| {
            let old = TLS_REFCELL.replace(black_box(Some(8)));
            TLS_REFCELL.set(old);
        });
    });
    group.finish();
}

fn current(c: &mut Criterion) {
    let mut group = c.benchmark_group("current");
    for n in [8, 1_000] {
        let mut ctx = context_with(n);
        ctx.run(|| {
            group.bench_function(format!("contextvars/{n}"), |b| b.iter(Context::current));
        });
    }
    // The floor for a `Send` snapshot: one atomic increment and one decrement.
    let shared = Arc::new(7_u64);
    group.bench_function("arc_clone_drop", |b| {
        b.iter(|| drop(black_box(Arc::clone(&shared))));
    });
    group.finish();
}

fn run(c: &mut Criterion) {
    let mut group = c.benchmark_group("run");
    let mut ctx = context_with(8);
    group.bench_function("contextvars", |b| b.iter(|| ctx.run(|| black_box(()))));
    // Python's idiom `copy_context().run(f)`: a snapshot, then run in it.
    ctx.run(|| {
        group.bench_function("contextvars_current_then_run", |b| {
            b.iter(|| Context::current().run(|| black_box(())));
        });
    });
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    get(&mut criterion);
    set_reset(&mut criterion);
    current(&mut criterion);
    run(&mut criterion);
    criterion.final_summary();
}
