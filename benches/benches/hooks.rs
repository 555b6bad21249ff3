//! What automatic flow costs: a task's poll and a spawn on a runtime with the context hooks
//! installed, against the same runtime without them (feature `hooks`, under
//! `--cfg tokio_unstable`). Both on a current-thread runtime, so that nothing but the hooks
//! differs and callgrind sees one thread.
//!
//! - `hooks OP N` runs operation `OP` `N` times: for instruction counts under callgrind (run
//!   with two values of `N`, divide the difference; `scripts/bench-hooks` does it).
//! - `hooks --time` prints nanoseconds per operation, the minimum over several runs.
//! - `hooks --list` names the operations.
//! - `hooks --tasks [N]` runs a whole workload, N tasks (default 1,000,000) that each yield 3
//!   times and read a variable, on a 2-worker multi-thread runtime with the hooks and without,
//!   in turn: it prints each side's median time (ms) and the median of the paired ratios.
//!   `hooks --tasks-once hooked|unhooked N` runs one side once, for a whole-process timer.
//!
//! The task's context holds 8 variables, as in the other benchmarks.

use std::hint::black_box;
use std::time::Instant;

use contextvars::Context;
use contextvars_benches::{REQUEST_ID, context_with};
use tokio::runtime::{Builder, Runtime};

type Op = fn(u64);

const OPS: &[(&str, Op)] = &[
    ("poll/unhooked", poll_unhooked),
    ("poll/hooked", poll_hooked),
    ("poll_reading/wrapped_unhooked", poll_reading_wrapped),
    ("poll_reading/hooked", poll_reading_hooked),
    ("spawn/unhooked", spawn_unhooked),
    ("spawn/hooked", spawn_hooked),
];

fn runtime(hooked: bool) -> Runtime {
    let mut builder = Builder::new_current_thread();
    if hooked {
        contextvars::hooks::install(&mut builder);
    }
    builder.build().expect("a runtime")
}

/// One task polled `iterations` times: it yields, and each yield costs one poll.
fn polls(hooked: bool, iterations: u64) {
    let runtime = runtime(hooked);
    let mut ctx: Context = context_with(8);
    ctx.run(|| {
        runtime.block_on(async {
            tokio::spawn(async move {
                for _ in 0..iterations {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("the task runs");
        });
    });
}

fn poll_unhooked(iterations: u64) {
    polls(false, iterations);
}

fn poll_hooked(iterations: u64) {
    polls(true, iterations);
}

/// One task polled `iterations` times that reads a variable on every poll, which makes the
/// hooks enter its context each time: on a runtime with the hooks (`tokio::spawn`), or
/// without them (`contextvars::spawn`, whose wrapper enters it on every poll).
fn polls_reading(hooked: bool, iterations: u64) {
    let runtime = runtime(hooked);
    let mut ctx: Context = context_with(8);
    ctx.run(|| {
        runtime.block_on(async {
            let task = async move {
                for _ in 0..iterations {
                    assert_eq!(black_box(&REQUEST_ID).get(), Some(7));
                    tokio::task::yield_now().await;
                }
            };
            if hooked {
                tokio::spawn(task).await.expect("the task runs");
            } else {
                contextvars::spawn(task).await.expect("the task runs");
            }
        });
    });
}

fn poll_reading_wrapped(iterations: u64) {
    polls_reading(false, iterations);
}

fn poll_reading_hooked(iterations: u64) {
    polls_reading(true, iterations);
}

/// `tokio::spawn` + await of an empty task, `iterations` times, from a task.
fn spawns(hooked: bool, iterations: u64) {
    let runtime = runtime(hooked);
    let mut ctx: Context = context_with(8);
    ctx.run(|| {
        runtime.block_on(async {
            tokio::spawn(async move {
                for _ in 0..iterations {
                    black_box(tokio::spawn(async { black_box(7_u64) }).await.expect("ran"));
                }
            })
            .await
            .expect("the task runs");
        });
    });
}

fn spawn_unhooked(iterations: u64) {
    spawns(false, iterations);
}

fn spawn_hooked(iterations: u64) {
    spawns(true, iterations);
}

/// The whole workload: `n` tasks spawned from a task on a 2-worker multi-thread runtime, each
/// yielding 3 times and then reading a variable, all awaited. With the hooks, each task reads
/// `REQUEST_ID` from the context it inherited; without, it reads the value moved into it (what
/// a service does without the library: pass it along), so the difference is all the library's.
fn tasks(hooked: bool, n: u64) -> std::time::Duration {
    let mut builder = Builder::new_multi_thread();
    builder.worker_threads(2);
    if hooked {
        contextvars::hooks::install(&mut builder);
    }
    let runtime = builder.build().expect("a runtime");
    let mut ctx: Context = context_with(8);
    let start = Instant::now();
    let sum = ctx.run(|| {
        runtime.block_on(async move {
            tokio::spawn(async move {
                let handles: Vec<_> = (0..n)
                    .map(|_| {
                        let passed = 7_u64;
                        tokio::spawn(async move {
                            for _ in 0..3 {
                                tokio::task::yield_now().await;
                            }
                            if hooked {
                                REQUEST_ID.get().unwrap_or(0)
                            } else {
                                black_box(passed)
                            }
                        })
                    })
                    .collect();
                let mut sum = 0;
                for handle in handles {
                    sum += handle.await.expect("the task runs");
                }
                sum
            })
            .await
            .expect("the spawner runs")
        })
    });
    let elapsed = start.elapsed();
    // Every task read its value (with the hooks: inherited through two spawns).
    assert_eq!(sum, 7 * n, "a task did not see the value");
    drop(runtime);
    elapsed
}

/// `--tasks`: the two sides in turn, `PAIRS` times after a warm-up of each.
fn tasks_paired(n: u64) {
    const PAIRS: usize = 7;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    tasks(false, n);
    tasks(true, n);
    let (mut plain, mut hooked, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..PAIRS {
        // Alternate which side goes first, so that a drift of the machine's speed is shared.
        let (a, b) = if pair % 2 == 0 {
            let a = tasks(false, n);
            (a, tasks(true, n))
        } else {
            let b = tasks(true, n);
            (tasks(false, n), b)
        };
        plain.push(a.as_secs_f64() * 1e3);
        hooked.push(b.as_secs_f64() * 1e3);
        ratios.push(b.as_secs_f64() / a.as_secs_f64());
    }
    println!("  tasks/unhooked: {:.1}", median(plain));
    println!("  tasks/hooked: {:.1}", median(hooked));
    println!("  tasks/ratio: {:.3}", median(ratios));
}

/// Nanoseconds per operation: the fastest of `RUNS` runs of `N` operations.
fn time(op: Op) -> f64 {
    const RUNS: usize = 15;
    const N: u64 = 100_000;
    op(N); // warm-up
    (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            op(N);
            start.elapsed().as_secs_f64() * 1e9 / 100_000.0
        })
        .fold(f64::INFINITY, f64::min)
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
        [flag] if flag == "--time" => {
            let figures: Vec<(&str, f64)> =
                OPS.iter().map(|(name, op)| (*name, time(*op))).collect();
            for (name, ns) in &figures {
                println!("{name}: {ns:.1} ns");
            }
            let get = |name: &str| figures.iter().find(|(n, _)| *n == name).map(|(_, ns)| *ns);
            if let (Some(a), Some(b), Some(c), Some(d)) = (
                get("poll/hooked"),
                get("poll/unhooked"),
                get("spawn/hooked"),
                get("spawn/unhooked"),
            ) {
                println!(
                    "poll: +{:.1} ns with hooks; spawn + await: {:.2}x",
                    a - b,
                    c / d
                );
            }
        }
        [flag, rest @ ..] if flag == "--tasks" && rest.len() <= 1 => {
            let n = rest
                .first()
                .map_or(1_000_000, |n| n.parse().expect("N is a number"));
            println!(
                "Tasks: {n}, each yielding 3 times and reading a variable (ms, 2 workers; median \
                 of 7 pairs, and of their ratios):"
            );
            tasks_paired(n);
        }
        [flag, side, n] if flag == "--tasks-once" && (side == "hooked" || side == "unhooked") => {
            let n: u64 = n.parse().expect("N is a number");
            let elapsed = tasks(side == "hooked", n);
            println!("{side}: {:.1} ms", elapsed.as_secs_f64() * 1e3);
        }
        [op, iterations] => {
            let iterations: u64 = iterations.parse().expect("N is a number");
            let (_, run) = OPS
                .iter()
                .find(|(name, _)| name == op)
                .unwrap_or_else(|| panic!("unknown operation {op}; see --list"));
            // On a thread of its own, as in `instructions.rs`: a fresh stack, whose addresses
            // do not move with the length of the environment and arguments.
            std::thread::scope(|scope| {
                scope.spawn(|| run(iterations));
            });
        }
        _ => {
            eprintln!(
                "usage: hooks --list | hooks --time | hooks OP N | hooks --tasks [N] \
                 | hooks --tasks-once hooked|unhooked N"
            );
            std::process::exit(2);
        }
    }
}
