//! Synchronous operations side by side: `get`, `set` + `reset`, `scoped`, `sync_scope`,
//! snapshots and `run`, for `contextvars`, `tokio::task_local!`, `thread_local!` and the other
//! context-propagation crates (`peers`); and a metadata map filled key by key (1,000 and
//! 10,000 keys).
//!
//! Benchmark ids are `operation/implementation[/values bound]`, the same as the operations of
//! `instructions.rs`; `scripts/bench-report` reads both. Rename all three together.

#[macro_use]
mod peers;
mod workloads;

// The values that fill the peers' contexts: the 1,000-value contexts are measured here.
declare_fillers!(1000);

use std::cell::{Cell, RefCell};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use contextvars::Context;
use contextvars_benches::{REQUEST_ID, RETRIES, TASK_REQUEST_ID, context_with};
use criterion::Criterion;
use execution_context::ExecutionContext;
use opentelemetry::Context as OtelContext;
use peers::{
    DC_REQUEST_ID, INHERIT_REQUEST_ID, Peer, dcontext_run, dcontext_set_reset, dcontext_with,
    ec_context_with, ec_get, ec_set_reset, enter, inherit_snapshot, otel_context_with,
    otel_get_current, otel_get_map_current, otel_run, otel_set_reset,
};

thread_local! {
    static TLS_REFCELL: RefCell<Option<u64>> = const { RefCell::new(None) };
    static TLS_CELL: Cell<Option<u64>> = const { Cell::new(None) };
}

fn get(c: &mut Criterion) {
    let mut group = c.benchmark_group("get");
    for n in [8, 1_000] {
        enter(Peer::Contextvars, n, || {
            assert_eq!(REQUEST_ID.get(), Some(7));
            group.bench_function(format!("contextvars/{n}"), |b| {
                b.iter(|| black_box(&REQUEST_ID).get());
            });
        });
        enter(Peer::Opentelemetry, n, || {
            group.bench_function(format!("opentelemetry_current/{n}"), |b| {
                b.iter(otel_get_current);
            });
            group.bench_function(format!("opentelemetry_map_current/{n}"), |b| {
                b.iter(otel_get_map_current);
            });
        });
        enter(Peer::Dcontext, n, || {
            group.bench_function(format!("dcontext/{n}"), |b| {
                b.iter(|| black_box(&DC_REQUEST_ID).get());
            });
        });
        enter(Peer::ExecutionContext, n, || {
            group.bench_function(format!("execution_context/{n}"), |b| b.iter(ec_get));
        });
        enter(Peer::InheritTaskLocal, n, || {
            group.bench_function(format!("inherit_task_local/{n}"), |b| {
                b.iter(|| black_box(&INHERIT_REQUEST_ID).get());
            });
        });
    }
    enter(Peer::Contextvars, 8, || {
        group.bench_function("contextvars/unset_default", |b| {
            b.iter(|| black_box(&RETRIES).get());
        });
    });
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
    enter(Peer::Contextvars, 8, || {
        group.bench_function("contextvars", |b| {
            b.iter(|| {
                let token = REQUEST_ID.set(black_box(8));
                REQUEST_ID.reset(token).expect("same context");
            });
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
    group.bench_function("thread_local_refcell", |b| {
        b.iter(|| {
            let old = TLS_REFCELL.replace(black_box(Some(8)));
            TLS_REFCELL.set(old);
        });
    });
    group.bench_function("thread_local_cell", |b| {
        b.iter(|| {
            let old = TLS_CELL.replace(black_box(Some(8)));
            TLS_CELL.set(old);
        });
    });
    enter(Peer::Opentelemetry, 8, || {
        group.bench_function("opentelemetry", |b| {
            b.iter(|| otel_set_reset(black_box(8)));
        });
    });
    enter(Peer::Dcontext, 8, || {
        group.bench_function("dcontext", |b| {
            b.iter(|| dcontext_set_reset(black_box(8)));
        });
    });
    // `FlowLocal::set` never frees the value it stores (it forgets a reference to it): 64 bytes
    // in 4 allocations per `set` + `reset`, by valgrind. A short measurement keeps the leak to
    // a few hundred MB.
    group.warm_up_time(Duration::from_millis(200));
    group.measurement_time(Duration::from_millis(500));
    enter(Peer::ExecutionContext, 8, || {
        group.bench_function("execution_context", |b| {
            b.iter(|| ec_set_reset(black_box(8)));
        });
    });
    group.finish();
}

fn scoped(c: &mut Criterion) {
    let mut group = c.benchmark_group("scoped");
    enter(Peer::Contextvars, 8, || {
        group.bench_function("contextvars", |b| {
            b.iter(|| drop(REQUEST_ID.scoped(black_box(8))));
        });
    });
    group.finish();
}

fn sync_scope(c: &mut Criterion) {
    let mut group = c.benchmark_group("sync_scope");
    enter(Peer::Contextvars, 8, || {
        group.bench_function("contextvars", |b| {
            b.iter(|| REQUEST_ID.sync_scope(black_box(8), || {}));
        });
    });
    // The only way to set a task local is a scope around the code that sees it.
    group.bench_function("task_local", |b| {
        b.iter(|| TASK_REQUEST_ID.sync_scope(black_box(8), || {}));
    });
    enter(Peer::InheritTaskLocal, 8, || {
        group.bench_function("inherit_task_local", |b| {
            b.iter(|| INHERIT_REQUEST_ID.sync_scope(black_box(8), || {}));
        });
    });
    group.finish();
}

fn current(c: &mut Criterion) {
    let mut group = c.benchmark_group("current");
    for n in [8, 1_000] {
        enter(Peer::Contextvars, n, || {
            group.bench_function(format!("contextvars/{n}"), |b| b.iter(Context::current));
        });
        enter(Peer::Opentelemetry, n, || {
            group.bench_function(format!("opentelemetry/{n}"), |b| {
                b.iter(OtelContext::current);
            });
        });
        enter(Peer::Dcontext, n, || {
            group.bench_function(format!("dcontext/{n}"), |b| b.iter(dcontext::capture));
            group.bench_function(format!("dcontext_fork/{n}"), |b| b.iter(dcontext::fork));
        });
        enter(Peer::ExecutionContext, n, || {
            group.bench_function(format!("execution_context/{n}"), |b| {
                b.iter(ExecutionContext::capture);
            });
        });
        enter(Peer::InheritTaskLocal, n, || {
            group.bench_function(format!("inherit_task_local/{n}"), |b| {
                b.iter(inherit_snapshot);
            });
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
    let otel = otel_context_with(8);
    group.bench_function("opentelemetry", |b| b.iter(|| otel_run(&otel)));
    let snapshot = dcontext_with(8);
    group.bench_function("dcontext", |b| {
        b.iter(|| dcontext_run(&snapshot));
    });
    let ec = ec_context_with(8);
    group.bench_function("execution_context", |b| {
        b.iter(|| ec.run(|| black_box(())));
    });
    group.finish();

    // Python's idiom `copy_context().run(f)`: a snapshot, then run in it.
    let mut group = c.benchmark_group("run_current");
    enter(Peer::Contextvars, 8, || {
        group.bench_function("contextvars", |b| {
            b.iter(|| Context::current().run(|| black_box(())));
        });
    });
    enter(Peer::Opentelemetry, 8, || {
        group.bench_function("opentelemetry", |b| {
            b.iter(|| drop(OtelContext::current().attach()));
        });
    });
    enter(Peer::Dcontext, 8, || {
        group.bench_function("dcontext", |b| {
            b.iter(|| drop(dcontext::attach_snapshot(dcontext::capture())));
        });
    });
    enter(Peer::ExecutionContext, 8, || {
        group.bench_function("execution_context", |b| {
            b.iter(|| ExecutionContext::capture().run(|| black_box(())));
        });
    });
    enter(Peer::InheritTaskLocal, 8, || {
        group.bench_function("inherit_task_local", |b| b.iter(|| inherit_snapshot()()));
    });
    group.finish();
}

/// Sets 1,000 and 10,000 metadata keys one by one in a new context: with a set that costs
/// O(log n), the second takes a little over 10 times the first.
fn set_metadata(c: &mut Criterion) {
    let mut group = c.benchmark_group("set_metadata");
    for n in [1_000, 10_000] {
        let keys = workloads::metadata_keys(n);
        group.bench_function(format!("contextvars/{n}"), |b| {
            b.iter(|| workloads::fill_metadata(&keys));
        });
        group.bench_function(format!("std_btreemap/{n}"), |b| {
            b.iter(|| workloads::fill_std_btreemap(&keys));
        });
    }
    group.finish();
}

fn main() {
    peers::verify();
    let mut criterion = Criterion::default().configure_from_args();
    get(&mut criterion);
    set_reset(&mut criterion);
    scoped(&mut criterion);
    sync_scope(&mut criterion);
    current(&mut criterion);
    run(&mut criterion);
    set_metadata(&mut criterion);
    criterion.final_summary();
}
