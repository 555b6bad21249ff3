//! Memory figures: what `WithContext` adds to a future's size, and the heap bytes a context
//! holds per variable set, counted by an instrumented global allocator.
//!
//! Prints one JSON object per line, prefixed with `memory `, for `scripts/bench-report`.
//! Figures are counts, not timings: they are the same on every run.

use std::alloc::System;
use std::future::Future;
use std::mem::size_of;

use contextvars::{Context, FutureExt, WithContext};
use contextvars_benches::{FILLERS, Pending, REQUEST_ID, TASK_REQUEST_ID, context_with};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn emit(name: &str, value: f64, unit: &str) {
    println!("memory {{\"name\": \"{name}\", \"value\": {value}, \"unit\": \"{unit}\"}}");
}

/// Heap bytes still held, and allocations made, while `f` ran; what `f` returns is kept alive
/// until the count is taken.
fn heap<R>(f: impl FnOnce() -> R) -> (isize, usize, R) {
    let region = Region::new(GLOBAL);
    let kept = f();
    let change = region.change();
    let live = change.bytes_allocated.cast_signed() - change.bytes_deallocated.cast_signed();
    (live, change.allocations, kept)
}

fn size_overhead<F: Future>(name: &str, future: F) {
    let inner = size_of::<F>();
    let wrapped = size_of::<WithContext<F>>();
    let task_local = size_of::<tokio::task::futures::TaskLocalFuture<u64, F>>();
    emit(
        &format!("with_context_size_overhead/{name}"),
        as_f64(wrapped - inner),
        "bytes",
    );
    emit(
        &format!("task_local_future_size_overhead/{name}"),
        as_f64(task_local - inner),
        "bytes",
    );
    drop(future.with_context(Context::new()));
}

fn as_f64(n: usize) -> f64 {
    f64::from(u32::try_from(n).expect("small figure"))
}

fn main() {
    // Ids are handed out on first use; take them all before counting.
    let _ = context_with(FILLERS.len());

    size_overhead("zero_sized", Pending);
    size_overhead("1k_state", async {
        let buffer = [0_u8; 1024];
        std::future::ready(()).await;
        std::hint::black_box(buffer);
    });
    emit("context_size", as_f64(size_of::<Context>()), "bytes");

    for n in [8, 1_000] {
        // Built the way a program does it: `set` after `set` inside a context.
        let (live, allocations, ctx) = heap(|| {
            let mut ctx = Context::new();
            ctx.run(|| {
                drop(REQUEST_ID.set(7));
                for (value, var) in (0_u64..).zip(&FILLERS[..n - 1]) {
                    drop(var.set(value));
                }
            });
            ctx
        });
        assert_eq!(ctx.len(), n);
        let per_var = f64::from(i32::try_from(live).expect("small")) / as_f64(n);
        emit(&format!("bytes_per_var/{n}"), per_var, "bytes");
        emit(
            &format!("allocations_per_var/{n}"),
            as_f64(allocations) / as_f64(n),
            "allocations",
        );

        let mut ctx = ctx;
        ctx.run(|| {
            let (live, allocations, snapshot) = heap(Context::current);
            emit(
                &format!("snapshot_bytes/{n}"),
                f64::from(i32::try_from(live).expect("small")),
                "bytes",
            );
            emit(
                &format!("snapshot_allocations/{n}"),
                as_f64(allocations),
                "allocations",
            );
            // The first `set` after a snapshot copies the path to the key.
            let (live, allocations, token) = heap(|| REQUEST_ID.set(8));
            emit(
                &format!("first_set_after_snapshot_bytes/{n}"),
                f64::from(i32::try_from(live).expect("small")),
                "bytes",
            );
            emit(
                &format!("first_set_after_snapshot_allocations/{n}"),
                as_f64(allocations),
                "allocations",
            );
            REQUEST_ID.reset(token).expect("same context");
            drop(snapshot);
        });
    }
    let _ = TASK_REQUEST_ID;
}
