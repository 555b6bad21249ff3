//! The benchmarked operations one at a time, for counting instructions under callgrind, which
//! is repeatable where wall-clock time on a shared machine is not.
//!
//! `instructions OP N` runs operation `OP` `N` times; `scripts/bench-report --instructions`
//! runs each operation under `valgrind --tool=callgrind` with two values of `N` and divides
//! the difference in instructions by the difference in `N`, which cancels the setup.
//! `instructions --list` names the operations. Not a timing: prints nothing else.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Waker};

use contextvars::{Context, FutureExt};
use contextvars_benches::{Pending, REQUEST_ID, RETRIES, TASK_REQUEST_ID, context_with};

type Op = fn(u64);

const OPS: &[(&str, Op)] = &[
    ("get/contextvars/8", get_8),
    ("get/contextvars/1000", get_1000),
    ("get/contextvars/unset_default", get_unset_default),
    ("get/task_local", get_task_local),
    ("set_reset/contextvars", set_reset),
    ("set_reset/task_local_sync_scope", set_reset_task_local),
    ("scoped/contextvars", scoped),
    ("current/contextvars/8", current_8),
    ("current/contextvars/1000", current_1000),
    ("current/arc_clone_drop", arc_clone_drop),
    ("run/contextvars", run),
    ("poll/bare", poll_bare),
    ("poll/with_context", poll_with_context),
    ("poll/task_local_future", poll_task_local),
    ("preserve/plain_async_fn", call_plain),
    ("preserve/preserve_context", call_preserved),
];

fn get_in(n: usize, iterations: u64) {
    context_with(n).run(|| {
        for _ in 0..iterations {
            black_box(black_box(&REQUEST_ID).get());
        }
    });
}

fn get_8(iterations: u64) {
    get_in(8, iterations);
}

fn get_1000(iterations: u64) {
    get_in(1_000, iterations);
}

fn get_unset_default(iterations: u64) {
    context_with(8).run(|| {
        for _ in 0..iterations {
            black_box(black_box(&RETRIES).get());
        }
    });
}

fn get_task_local(iterations: u64) {
    TASK_REQUEST_ID.sync_scope(7, || {
        for _ in 0..iterations {
            black_box(black_box(&TASK_REQUEST_ID).get());
        }
    });
}

fn set_reset(iterations: u64) {
    context_with(8).run(|| {
        for _ in 0..iterations {
            let token = REQUEST_ID.set(black_box(8));
            REQUEST_ID.reset(token).expect("same context");
        }
    });
}

fn scoped(iterations: u64) {
    context_with(8).run(|| {
        for _ in 0..iterations {
            drop(REQUEST_ID.scoped(black_box(8)));
        }
    });
}

fn set_reset_task_local(iterations: u64) {
    for _ in 0..iterations {
        TASK_REQUEST_ID.sync_scope(black_box(8), || {});
    }
}

fn current_in(n: usize, iterations: u64) {
    context_with(n).run(|| {
        for _ in 0..iterations {
            black_box(Context::current());
        }
    });
}

fn current_8(iterations: u64) {
    current_in(8, iterations);
}

fn current_1000(iterations: u64) {
    current_in(1_000, iterations);
}

fn arc_clone_drop(iterations: u64) {
    let shared = Arc::new(7_u64);
    for _ in 0..iterations {
        drop(black_box(Arc::clone(&shared)));
    }
}

fn run(iterations: u64) {
    let mut ctx = context_with(8);
    for _ in 0..iterations {
        ctx.run(|| black_box(()));
    }
}

fn poll_many<F: Future>(future: F, iterations: u64) {
    let mut future = pin!(future);
    let mut cx = TaskContext::from_waker(Waker::noop());
    for _ in 0..iterations {
        assert!(black_box(future.as_mut().poll(&mut cx)).is_pending());
    }
}

fn poll_bare(iterations: u64) {
    poll_many(Pending, iterations);
}

fn poll_with_context(iterations: u64) {
    poll_many(Pending.with_context(context_with(8)), iterations);
}

fn poll_task_local(iterations: u64) {
    poll_many(TASK_REQUEST_ID.scope(7, Pending), iterations);
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

fn call_plain(iterations: u64) {
    call_many(plain, iterations);
}

fn call_preserved(iterations: u64) {
    call_many(preserved, iterations);
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
        [name, iterations] => {
            let (_, op) = OPS
                .iter()
                .find(|(n, _)| n == name)
                .expect("an operation from --list");
            op(iterations.parse().expect("a number of iterations"));
        }
        // `cargo bench` runs every bench target, with no arguments: nothing to do.
        _ => {}
    }
}
