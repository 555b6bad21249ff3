//! The benchmarked operations one at a time, for counting instructions under callgrind, which
//! is repeatable where wall-clock time on a shared machine is not.
//!
//! `instructions OP N` runs operation `OP` `N` times; `scripts/bench-report --instructions`
//! runs each operation under `valgrind --tool=callgrind` with two values of `N` and divides
//! the difference in instructions by the difference in `N`, which cancels the setup.
//! `instructions --list` names the operations; `instructions --verify` checks once that every
//! peer's operations do their work (run natively, before counting). Not a timing: prints
//! nothing else.
//!
//! Operation names are the benchmark ids of `context.rs` and `futures.rs`:
//! `operation/implementation[/values bound]`.

#[macro_use]
mod peers;
mod workloads;

// The values that fill the peers' contexts: the 1,000-value contexts are measured here.
declare_fillers!(1000);

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Waker};

use contextvars::{Context, FutureExt};
use contextvars_benches::{
    Pending, PendingReadingTaskLocal, PendingReadingVar, REQUEST_ID, RETRIES, TASK_REQUEST_ID,
    context_with,
};
use execution_context::ExecutionContext;
use opentelemetry::Context as OtelContext;
use peers::{
    DC_REQUEST_ID, INHERIT_REQUEST_ID, Peer, dcontext_run, dcontext_set_reset, dcontext_with,
    ec_context_with, ec_get, ec_set_reset, enter, inherit_future, inherit_snapshot,
    otel_context_with, otel_get_current, otel_get_map_current, otel_run, otel_set_reset,
    spawn_and_await,
};
use tracing::Instrument;
use workloads::Combinator;

type Op = fn(u64);

thread_local! {
    static TLS_REFCELL: RefCell<Option<u64>> = const { RefCell::new(None) };
    static TLS_CELL: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Runs `op` `iterations` times inside `peer`'s context with `n` values bound.
fn repeat_in<R>(peer: Peer, n: usize, iterations: u64, op: impl Fn() -> R) {
    enter(peer, n, || {
        for _ in 0..iterations {
            black_box(op());
        }
    });
}

/// Runs `op` `iterations` times, outside any context.
fn repeat<R>(iterations: u64, op: impl Fn() -> R) {
    for _ in 0..iterations {
        black_box(op());
    }
}

const OPS: &[(&str, Op)] = &[
    // get
    ("get/contextvars/8", |i| {
        repeat_in(Peer::Contextvars, 8, i, || black_box(&REQUEST_ID).get());
    }),
    ("get/contextvars/1000", |i| {
        repeat_in(Peer::Contextvars, 1_000, i, || black_box(&REQUEST_ID).get());
    }),
    ("get/contextvars/unset_default", |i| {
        repeat_in(Peer::Contextvars, 8, i, || black_box(&RETRIES).get());
    }),
    ("get/task_local", |i| {
        TASK_REQUEST_ID.sync_scope(7, || repeat(i, || black_box(&TASK_REQUEST_ID).get()));
    }),
    ("get/contextvars_thread_context/1", |i| {
        // The thread's own context (plain threads, `block_on`'s root future), not an entered one.
        let token = REQUEST_ID.set(7);
        repeat(i, || black_box(&REQUEST_ID).get());
        REQUEST_ID.reset(token).expect("same context");
    }),
    ("get/thread_local_cell", |i| {
        TLS_CELL.set(Some(7));
        repeat(i, || black_box(&TLS_CELL).get());
    }),
    ("get/thread_local_refcell", |i| {
        TLS_REFCELL.set(Some(7));
        repeat(i, || black_box(&TLS_REFCELL).with_borrow(|v| *v));
    }),
    ("get/opentelemetry_current/8", |i| {
        repeat_in(Peer::Opentelemetry, 8, i, otel_get_current);
    }),
    ("get/opentelemetry_current/1000", |i| {
        repeat_in(Peer::Opentelemetry, 1_000, i, otel_get_current);
    }),
    ("get/opentelemetry_map_current/8", |i| {
        repeat_in(Peer::Opentelemetry, 8, i, otel_get_map_current);
    }),
    ("get/opentelemetry_map_current/1000", |i| {
        repeat_in(Peer::Opentelemetry, 1_000, i, otel_get_map_current);
    }),
    ("get/dcontext/8", |i| {
        repeat_in(Peer::Dcontext, 8, i, || black_box(&DC_REQUEST_ID).get());
    }),
    ("get/dcontext/1000", |i| {
        repeat_in(Peer::Dcontext, 1_000, i, || black_box(&DC_REQUEST_ID).get());
    }),
    ("get/execution_context/8", |i| {
        repeat_in(Peer::ExecutionContext, 8, i, ec_get);
    }),
    ("get/execution_context/1000", |i| {
        repeat_in(Peer::ExecutionContext, 1_000, i, ec_get);
    }),
    ("get/inherit_task_local/8", |i| {
        repeat_in(Peer::InheritTaskLocal, 8, i, || {
            black_box(&INHERIT_REQUEST_ID).get()
        });
    }),
    ("get/inherit_task_local/1000", |i| {
        repeat_in(Peer::InheritTaskLocal, 1_000, i, || {
            black_box(&INHERIT_REQUEST_ID).get()
        });
    }),
    // set + reset
    ("set_reset/contextvars", |i| {
        repeat_in(Peer::Contextvars, 8, i, || {
            let token = REQUEST_ID.set(black_box(8));
            REQUEST_ID.reset(token).expect("same context");
        });
    }),
    ("set_reset/contextvars_after_snapshot", |i| {
        repeat_in(Peer::Contextvars, 8, i, || {
            let snapshot = Context::current();
            let token = REQUEST_ID.set(black_box(8));
            REQUEST_ID.reset(token).expect("same context");
            snapshot
        });
    }),
    ("set_reset/thread_local_cell", |i| {
        repeat(i, || {
            let old = TLS_CELL.replace(black_box(Some(8)));
            TLS_CELL.set(old);
        });
    }),
    ("set_reset/thread_local_refcell", |i| {
        repeat(i, || {
            let old = TLS_REFCELL.replace(black_box(Some(8)));
            TLS_REFCELL.set(old);
        });
    }),
    ("set_reset/opentelemetry", |i| {
        repeat_in(Peer::Opentelemetry, 8, i, || otel_set_reset(black_box(8)));
    }),
    ("set_reset/dcontext", |i| {
        repeat_in(Peer::Dcontext, 8, i, || dcontext_set_reset(black_box(8)));
    }),
    ("set_reset/execution_context", |i| {
        repeat_in(Peer::ExecutionContext, 8, i, || ec_set_reset(black_box(8)));
    }),
    ("scoped/contextvars", |i| {
        repeat_in(Peer::Contextvars, 8, i, || {
            drop(REQUEST_ID.scoped(black_box(8)));
        });
    }),
    // sync_scope
    ("sync_scope/contextvars", |i| {
        repeat_in(Peer::Contextvars, 8, i, || {
            REQUEST_ID.sync_scope(black_box(8), || {});
        });
    }),
    ("sync_scope/task_local", |i| {
        repeat(i, || TASK_REQUEST_ID.sync_scope(black_box(8), || {}));
    }),
    ("sync_scope/inherit_task_local", |i| {
        repeat_in(Peer::InheritTaskLocal, 8, i, || {
            INHERIT_REQUEST_ID.sync_scope(black_box(8), || {});
        });
    }),
    // snapshots
    ("current/contextvars/8", |i| {
        repeat_in(Peer::Contextvars, 8, i, Context::current);
    }),
    ("current/contextvars/1000", |i| {
        repeat_in(Peer::Contextvars, 1_000, i, Context::current);
    }),
    ("current/arc_clone_drop", |i| {
        let shared = Arc::new(7_u64);
        repeat(i, || drop(black_box(Arc::clone(&shared))));
    }),
    ("current/opentelemetry/8", |i| {
        repeat_in(Peer::Opentelemetry, 8, i, OtelContext::current);
    }),
    ("current/opentelemetry/1000", |i| {
        repeat_in(Peer::Opentelemetry, 1_000, i, OtelContext::current);
    }),
    ("current/dcontext/8", |i| {
        repeat_in(Peer::Dcontext, 8, i, dcontext::capture);
    }),
    ("current/dcontext/1000", |i| {
        repeat_in(Peer::Dcontext, 1_000, i, dcontext::capture);
    }),
    ("current/dcontext_fork/8", |i| {
        repeat_in(Peer::Dcontext, 8, i, dcontext::fork);
    }),
    ("current/dcontext_fork/1000", |i| {
        repeat_in(Peer::Dcontext, 1_000, i, dcontext::fork);
    }),
    ("current/execution_context/8", |i| {
        repeat_in(Peer::ExecutionContext, 8, i, ExecutionContext::capture);
    }),
    ("current/execution_context/1000", |i| {
        repeat_in(Peer::ExecutionContext, 1_000, i, ExecutionContext::capture);
    }),
    ("current/inherit_task_local/8", |i| {
        repeat_in(Peer::InheritTaskLocal, 8, i, inherit_snapshot);
    }),
    ("current/inherit_task_local/1000", |i| {
        repeat_in(Peer::InheritTaskLocal, 1_000, i, inherit_snapshot);
    }),
    // run in a held snapshot, from outside it
    ("run/contextvars", |i| {
        let mut ctx = context_with(8);
        for _ in 0..i {
            ctx.run(|| black_box(()));
        }
    }),
    ("run/opentelemetry", |i| {
        let cx = otel_context_with(8);
        repeat(i, || otel_run(&cx));
    }),
    ("run/dcontext", |i| {
        let snapshot = dcontext_with(8);
        repeat(i, || dcontext_run(&snapshot));
    }),
    ("run/execution_context", |i| {
        let ec = ec_context_with(8);
        repeat(i, || ec.run(|| black_box(())));
    }),
    // a snapshot of the current context, then run in it
    ("run_current/contextvars", |i| {
        repeat_in(Peer::Contextvars, 8, i, || {
            Context::current().run(|| black_box(()));
        });
    }),
    ("run_current/opentelemetry", |i| {
        repeat_in(Peer::Opentelemetry, 8, i, || {
            drop(OtelContext::current().attach());
        });
    }),
    ("run_current/dcontext", |i| {
        repeat_in(Peer::Dcontext, 8, i, || {
            drop(dcontext::attach_snapshot(dcontext::capture()));
        });
    }),
    ("run_current/execution_context", |i| {
        repeat_in(Peer::ExecutionContext, 8, i, || {
            ExecutionContext::capture().run(|| black_box(()));
        });
    }),
    ("run_current/inherit_task_local", |i| {
        repeat_in(Peer::InheritTaskLocal, 8, i, || inherit_snapshot()());
    }),
    // one poll of a wrapped pending future
    ("poll/bare", |i| poll_many(Pending, i)),
    ("poll/contextvars", |i| {
        poll_many(Pending.with_context(context_with(8)), i);
    }),
    ("poll/task_local", |i| {
        poll_many(TASK_REQUEST_ID.scope(7, Pending), i);
    }),
    ("poll/opentelemetry", |i| {
        poll_many(
            opentelemetry::context::FutureExt::with_context(Pending, otel_context_with(8)),
            i,
        );
    }),
    ("poll/dcontext", |i| {
        poll_many(
            dcontext::ContextFutureExt::attach(Pending, dcontext_with(8)),
            i,
        );
    }),
    ("poll/inherit_task_local", |i| {
        poll_many(
            enter(Peer::InheritTaskLocal, 8, || inherit_future(Pending)),
            i,
        );
    }),
    ("poll/contextvars_get", |i| {
        poll_many(PendingReadingVar.with_context(context_with(8)), i);
    }),
    ("poll/task_local_get", |i| {
        poll_many(TASK_REQUEST_ID.scope(7, PendingReadingTaskLocal), i);
    }),
    // spawn + await on a current-thread runtime
    ("spawn/tokio", |i| {
        spawn_and_await(Peer::Contextvars, i, || {
            tokio::spawn(async { black_box(7_u64) })
        });
    }),
    ("spawn/contextvars", |i| {
        spawn_and_await(Peer::Contextvars, i, || {
            contextvars::spawn(async { black_box(7_u64) })
        });
    }),
    ("spawn/task_local", |i| {
        spawn_and_await(Peer::Contextvars, i, || {
            tokio::spawn(TASK_REQUEST_ID.scope(7, async { black_box(7_u64) }))
        });
    }),
    ("spawn/opentelemetry", |i| {
        spawn_and_await(Peer::Opentelemetry, i, || {
            tokio::spawn(opentelemetry::context::FutureExt::with_current_context(
                async { black_box(7_u64) },
            ))
        });
    }),
    ("spawn/dcontext", |i| {
        spawn_and_await(Peer::Dcontext, i, || {
            tokio::spawn(dcontext::ContextFutureExt::fork(async { black_box(7_u64) }))
        });
    }),
    ("spawn/inherit_task_local", |i| {
        spawn_and_await(Peer::InheritTaskLocal, i, || {
            tokio::spawn(inherit_future(async { black_box(7_u64) }))
        });
    }),
    // Spans: by hand (`.in_current_span()`, `.instrument()`) and carried (`carry_spans`),
    // spawned or polled inside a span of tracing-subscriber's registry.
    ("spawn/tokio_in_current_span", |i| {
        in_span(|| {
            spawn_and_await(Peer::Contextvars, i, || {
                tokio::spawn(async { black_box(7_u64) }.in_current_span())
            });
        });
    }),
    ("spawn/contextvars_in_current_span", |i| {
        in_span(|| {
            spawn_and_await(Peer::Contextvars, i, || {
                contextvars::spawn(async { black_box(7_u64) }.in_current_span())
            });
        });
    }),
    // The span entered by hand around the spawner, which its context does not carry yet (a
    // handler under a request span): every snapshot takes a new handle on it.
    ("spawn/contextvars_carry_spans", |i| {
        contextvars::tracing::carry_spans();
        in_span(|| {
            spawn_and_await(Peer::Contextvars, i, || {
                contextvars::spawn(async { black_box(7_u64) })
            });
        });
    }),
    // The spawner runs in a context that carries the span already (a task spawned in it):
    // snapshots share its handle.
    ("spawn/contextvars_carry_spans_carried", |i| {
        contextvars::tracing::carry_spans();
        in_span(|| {
            // The 8 values and the span, as a task spawned in the span holds them.
            let mut carried = context_with(8).run(Context::current);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a runtime");
            carried.run(|| {
                runtime.block_on(async {
                    for _ in 0..i {
                        black_box(contextvars::spawn(async { black_box(7_u64) }).await).unwrap();
                    }
                });
            });
        });
    }),
    ("poll/instrumented", |i| {
        in_span(|| {
            let span = tracing::Span::current();
            poll_many(Pending.instrument(span), i);
        });
    }),
    ("poll/contextvars_carry_spans", |i| {
        contextvars::tracing::carry_spans();
        in_span(|| {
            let carried = context_with(8).run(Context::current);
            poll_many(Pending.with_context(carried), i);
        });
    }),
    // `async fn` calls
    ("preserve/plain_async_fn", |i| call_many(plain, i)),
    ("preserve/preserve_context", |i| call_many(preserved, i)),
    ("preserve/in_current_context", |i| {
        call_many(|x| plain(x).in_current_context(), i);
    }),
    // Whole workloads, each far longer than the operations above: `scripts/bench-report`
    // counts them over fewer iterations.
    ("gather_sleepers/contextvars/10000", |i| {
        repeat(i, || workloads::sleepers(Combinator::Gather));
    }),
    ("gather_sleepers/join_all/10000", |i| {
        repeat(i, || workloads::sleepers(Combinator::JoinAll));
    }),
    ("gather_4_permits/contextvars/10000", |i| {
        repeat(i, || workloads::permits(Combinator::Gather));
    }),
    ("gather_4_permits/join_all/10000", |i| {
        repeat(i, || workloads::permits(Combinator::JoinAll));
    }),
    ("set_metadata/contextvars/1000", |i| {
        let keys = workloads::metadata_keys(1_000);
        repeat(i, || workloads::fill_metadata(&keys));
    }),
    ("set_metadata/contextvars/10000", |i| {
        let keys = workloads::metadata_keys(10_000);
        repeat(i, || workloads::fill_metadata(&keys));
    }),
    ("set_metadata/std_btreemap/1000", |i| {
        let keys = workloads::metadata_keys(1_000);
        repeat(i, || workloads::fill_std_btreemap(&keys));
    }),
    ("set_metadata/std_btreemap/10000", |i| {
        let keys = workloads::metadata_keys(10_000);
        repeat(i, || workloads::fill_std_btreemap(&keys));
    }),
];

/// Runs `f` inside a span of a tracing-subscriber registry, the thread's default subscriber.
fn in_span(f: impl FnOnce()) {
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
    tracing::info_span!("request", id = 17).in_scope(f);
}

fn poll_many<F: Future>(future: F, iterations: u64) {
    let mut future = pin!(future);
    let mut cx = TaskContext::from_waker(Waker::noop());
    for _ in 0..iterations {
        assert!(black_box(future.as_mut().poll(&mut cx)).is_pending());
    }
}

async fn plain(x: u64) -> u64 {
    black_box(std::future::ready(x).await)
}

#[contextvars::preserve_context]
async fn preserved(x: u64) -> u64 {
    black_box(std::future::ready(x).await)
}

/// Calls an `async fn` and polls its future to completion, `iterations` times, in a context
/// with 8 variables set.
fn call_many<F: Future<Output = u64>>(call: impl Fn(u64) -> F, iterations: u64) {
    let mut cx = TaskContext::from_waker(Waker::noop());
    context_with(8).run(|| {
        for _ in 0..iterations {
            let future = pin!(call(black_box(7)));
            assert!(future.poll(&mut cx).is_ready());
        }
    });
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.as_slice() {
        [list] if list == "--list" => {
            for (name, _) in OPS {
                println!("{name}");
            }
        }
        [verify] if verify == "--verify" => {
            peers::verify();
            // Each operation once, so that none panics under callgrind.
            for (_, op) in OPS {
                op(1);
            }
            println!("verified");
        }
        [name, iterations] => {
            let (_, op) = OPS
                .iter()
                .find(|(n, _)| n == name)
                .expect("an operation from --list");
            let iterations = iterations.parse().expect("a number of iterations");
            // On a thread of its own: its stack starts on a fresh page, where the main
            // thread's starts below the environment and arguments, so that their length
            // (a longer path, one more digit of N) would shift every stack address and, with
            // it, the alignment-dependent paths of `memcpy`: counts would move by 10% on
            // spawns with the caller's environment.
            std::thread::scope(|scope| {
                scope.spawn(|| op(iterations));
            });
        }
        // `cargo bench` runs every bench target, with no arguments: nothing to do.
        _ => {}
    }
}
