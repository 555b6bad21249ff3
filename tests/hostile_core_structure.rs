//! Hostile tests of the structure under the API: a context with many variables (a map
//! deeper than one node) cloned, written and dropped on many threads at once; a job its
//! executor drops unrun; metadata where no context is writable; `gather` branches that spawn.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use contextvars::metadata::{
    MetadataFlags, get_all_metadata, get_metadata, set_metadata, try_set_metadata_with,
};
use contextvars::{Context, FutureExt, context_var};

mod support;
use support::Rng;

const VARS: usize = 64;

#[context_var]
static V00: u64;
#[context_var]
static V01: u64;
#[context_var]
static V02: u64;
#[context_var]
static V03: u64;
#[context_var]
static V04: u64;
#[context_var]
static V05: u64;
#[context_var]
static V06: u64;
#[context_var]
static V07: u64;
#[context_var]
static V08: u64;
#[context_var]
static V09: u64;
#[context_var]
static V10: u64;
#[context_var]
static V11: u64;
#[context_var]
static V12: u64;
#[context_var]
static V13: u64;
#[context_var]
static V14: u64;
#[context_var]
static V15: u64;
#[context_var]
static V16: u64;
#[context_var]
static V17: u64;
#[context_var]
static V18: u64;
#[context_var]
static V19: u64;
#[context_var]
static V20: u64;
#[context_var]
static V21: u64;
#[context_var]
static V22: u64;
#[context_var]
static V23: u64;
#[context_var]
static V24: u64;
#[context_var]
static V25: u64;
#[context_var]
static V26: u64;
#[context_var]
static V27: u64;
#[context_var]
static V28: u64;
#[context_var]
static V29: u64;
#[context_var]
static V30: u64;
#[context_var]
static V31: u64;
#[context_var]
static V32: u64;
#[context_var]
static V33: u64;
#[context_var]
static V34: u64;
#[context_var]
static V35: u64;
#[context_var]
static V36: u64;
#[context_var]
static V37: u64;
#[context_var]
static V38: u64;
#[context_var]
static V39: u64;
#[context_var]
static V40: u64;
#[context_var]
static V41: u64;
#[context_var]
static V42: u64;
#[context_var]
static V43: u64;
#[context_var]
static V44: u64;
#[context_var]
static V45: u64;
#[context_var]
static V46: u64;
#[context_var]
static V47: u64;
#[context_var]
static V48: u64;
#[context_var]
static V49: u64;
#[context_var]
static V50: u64;
#[context_var]
static V51: u64;
#[context_var]
static V52: u64;
#[context_var]
static V53: u64;
#[context_var]
static V54: u64;
#[context_var]
static V55: u64;
#[context_var]
static V56: u64;
#[context_var]
static V57: u64;
#[context_var]
static V58: u64;
#[context_var]
static V59: u64;
#[context_var]
static V60: u64;
#[context_var]
static V61: u64;
#[context_var]
static V62: u64;
#[context_var]
static V63: u64;

/// Sets variable `index` (of `VARS`) to `value`, keeping it (the token is dropped).
fn set_var(index: usize, value: u64) {
    match index {
        0 => drop(V00.set(value)),
        1 => drop(V01.set(value)),
        2 => drop(V02.set(value)),
        3 => drop(V03.set(value)),
        4 => drop(V04.set(value)),
        5 => drop(V05.set(value)),
        6 => drop(V06.set(value)),
        7 => drop(V07.set(value)),
        8 => drop(V08.set(value)),
        9 => drop(V09.set(value)),
        10 => drop(V10.set(value)),
        11 => drop(V11.set(value)),
        12 => drop(V12.set(value)),
        13 => drop(V13.set(value)),
        14 => drop(V14.set(value)),
        15 => drop(V15.set(value)),
        16 => drop(V16.set(value)),
        17 => drop(V17.set(value)),
        18 => drop(V18.set(value)),
        19 => drop(V19.set(value)),
        20 => drop(V20.set(value)),
        21 => drop(V21.set(value)),
        22 => drop(V22.set(value)),
        23 => drop(V23.set(value)),
        24 => drop(V24.set(value)),
        25 => drop(V25.set(value)),
        26 => drop(V26.set(value)),
        27 => drop(V27.set(value)),
        28 => drop(V28.set(value)),
        29 => drop(V29.set(value)),
        30 => drop(V30.set(value)),
        31 => drop(V31.set(value)),
        32 => drop(V32.set(value)),
        33 => drop(V33.set(value)),
        34 => drop(V34.set(value)),
        35 => drop(V35.set(value)),
        36 => drop(V36.set(value)),
        37 => drop(V37.set(value)),
        38 => drop(V38.set(value)),
        39 => drop(V39.set(value)),
        40 => drop(V40.set(value)),
        41 => drop(V41.set(value)),
        42 => drop(V42.set(value)),
        43 => drop(V43.set(value)),
        44 => drop(V44.set(value)),
        45 => drop(V45.set(value)),
        46 => drop(V46.set(value)),
        47 => drop(V47.set(value)),
        48 => drop(V48.set(value)),
        49 => drop(V49.set(value)),
        50 => drop(V50.set(value)),
        51 => drop(V51.set(value)),
        52 => drop(V52.set(value)),
        53 => drop(V53.set(value)),
        54 => drop(V54.set(value)),
        55 => drop(V55.set(value)),
        56 => drop(V56.set(value)),
        57 => drop(V57.set(value)),
        58 => drop(V58.set(value)),
        59 => drop(V59.set(value)),
        60 => drop(V60.set(value)),
        61 => drop(V61.set(value)),
        62 => drop(V62.set(value)),
        63 => drop(V63.set(value)),
        _ => unreachable!(),
    }
}

/// Reads variable `index` in the current context.
fn get_var(index: usize) -> Option<u64> {
    match index {
        0 => V00.get(),
        1 => V01.get(),
        2 => V02.get(),
        3 => V03.get(),
        4 => V04.get(),
        5 => V05.get(),
        6 => V06.get(),
        7 => V07.get(),
        8 => V08.get(),
        9 => V09.get(),
        10 => V10.get(),
        11 => V11.get(),
        12 => V12.get(),
        13 => V13.get(),
        14 => V14.get(),
        15 => V15.get(),
        16 => V16.get(),
        17 => V17.get(),
        18 => V18.get(),
        19 => V19.get(),
        20 => V20.get(),
        21 => V21.get(),
        22 => V22.get(),
        23 => V23.get(),
        24 => V24.get(),
        25 => V25.get(),
        26 => V26.get(),
        27 => V27.get(),
        28 => V28.get(),
        29 => V29.get(),
        30 => V30.get(),
        31 => V31.get(),
        32 => V32.get(),
        33 => V33.get(),
        34 => V34.get(),
        35 => V35.get(),
        36 => V36.get(),
        37 => V37.get(),
        38 => V38.get(),
        39 => V39.get(),
        40 => V40.get(),
        41 => V41.get(),
        42 => V42.get(),
        43 => V43.get(),
        44 => V44.get(),
        45 => V45.get(),
        46 => V46.get(),
        47 => V47.get(),
        48 => V48.get(),
        49 => V49.get(),
        50 => V50.get(),
        51 => V51.get(),
        52 => V52.get(),
        53 => V53.get(),
        54 => V54.get(),
        55 => V55.get(),
        56 => V56.get(),
        57 => V57.get(),
        58 => V58.get(),
        59 => V59.get(),
        60 => V60.get(),
        61 => V61.get(),
        62 => V62.get(),
        63 => V63.get(),
        _ => unreachable!(),
    }
}

/// Reads variable `index` in `ctx`'s mapping.
fn ctx_get(ctx: &Context, index: usize) -> Option<u64> {
    match index {
        0 => ctx.get(&V00).copied(),
        1 => ctx.get(&V01).copied(),
        2 => ctx.get(&V02).copied(),
        3 => ctx.get(&V03).copied(),
        4 => ctx.get(&V04).copied(),
        5 => ctx.get(&V05).copied(),
        6 => ctx.get(&V06).copied(),
        7 => ctx.get(&V07).copied(),
        8 => ctx.get(&V08).copied(),
        9 => ctx.get(&V09).copied(),
        10 => ctx.get(&V10).copied(),
        11 => ctx.get(&V11).copied(),
        12 => ctx.get(&V12).copied(),
        13 => ctx.get(&V13).copied(),
        14 => ctx.get(&V14).copied(),
        15 => ctx.get(&V15).copied(),
        16 => ctx.get(&V16).copied(),
        17 => ctx.get(&V17).copied(),
        18 => ctx.get(&V18).copied(),
        19 => ctx.get(&V19).copied(),
        20 => ctx.get(&V20).copied(),
        21 => ctx.get(&V21).copied(),
        22 => ctx.get(&V22).copied(),
        23 => ctx.get(&V23).copied(),
        24 => ctx.get(&V24).copied(),
        25 => ctx.get(&V25).copied(),
        26 => ctx.get(&V26).copied(),
        27 => ctx.get(&V27).copied(),
        28 => ctx.get(&V28).copied(),
        29 => ctx.get(&V29).copied(),
        30 => ctx.get(&V30).copied(),
        31 => ctx.get(&V31).copied(),
        32 => ctx.get(&V32).copied(),
        33 => ctx.get(&V33).copied(),
        34 => ctx.get(&V34).copied(),
        35 => ctx.get(&V35).copied(),
        36 => ctx.get(&V36).copied(),
        37 => ctx.get(&V37).copied(),
        38 => ctx.get(&V38).copied(),
        39 => ctx.get(&V39).copied(),
        40 => ctx.get(&V40).copied(),
        41 => ctx.get(&V41).copied(),
        42 => ctx.get(&V42).copied(),
        43 => ctx.get(&V43).copied(),
        44 => ctx.get(&V44).copied(),
        45 => ctx.get(&V45).copied(),
        46 => ctx.get(&V46).copied(),
        47 => ctx.get(&V47).copied(),
        48 => ctx.get(&V48).copied(),
        49 => ctx.get(&V49).copied(),
        50 => ctx.get(&V50).copied(),
        51 => ctx.get(&V51).copied(),
        52 => ctx.get(&V52).copied(),
        53 => ctx.get(&V53).copied(),
        54 => ctx.get(&V54).copied(),
        55 => ctx.get(&V55).copied(),
        56 => ctx.get(&V56).copied(),
        57 => ctx.get(&V57).copied(),
        58 => ctx.get(&V58).copied(),
        59 => ctx.get(&V59).copied(),
        60 => ctx.get(&V60).copied(),
        61 => ctx.get(&V61).copied(),
        62 => ctx.get(&V62).copied(),
        63 => ctx.get(&V63).copied(),
        _ => unreachable!(),
    }
}

/// B18, S9: a base context with every one of many variables set is cloned on eight threads at
/// once; each thread writes a random subset in its clone, in rounds, dropping and re-cloning,
/// while the others do the same: each clone reads its own writes and the base's values
/// elsewhere, and the base never changes.
#[test]
fn many_threads_writing_clones_of_one_deep_context_never_see_each_other() {
    let mut seeded = Context::new();
    seeded.run(|| {
        for index in 0..VARS {
            set_var(index, index as u64);
        }
    });
    let base = Arc::new(seeded);
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8u64)
        .map(|thread| {
            let base = Arc::clone(&base);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut rng = Rng::new(thread + 1);
                barrier.wait();
                for round in 0..200u64 {
                    let mut mine = (*base).clone();
                    let mut expected: Vec<u64> = (0..VARS as u64).collect();
                    let writes = rng.below(8) + 1;
                    mine.run(|| {
                        for _ in 0..writes {
                            let index = usize::try_from(rng.below(VARS as u64)).unwrap();
                            let value = 1_000_000 * (thread + 1) + round;
                            set_var(index, value);
                            expected[index] = value;
                        }
                        for (index, want) in expected.iter().enumerate() {
                            assert_eq!(get_var(index), Some(*want));
                        }
                    });
                    for (index, want) in expected.iter().enumerate() {
                        assert_eq!(ctx_get(&mine, index), Some(*want));
                    }
                    // Half the clones are kept a little longer, so drops interleave.
                    if round % 2 == 0 {
                        drop(mine);
                    } else {
                        std::thread::yield_now();
                        drop(mine);
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(base.len(), VARS);
    for index in 0..VARS {
        assert_eq!(ctx_get(&base, index), Some(index as u64));
    }
}

static JOB_DROPS: Mutex<Vec<Option<u64>>> = Mutex::new(Vec::new());

struct ReadsOnDrop;

impl Drop for ReadsOnDrop {
    fn drop(&mut self) {
        JOB_DROPS.lock().unwrap().push(V00.get());
    }
}

#[context_var]
static HELD: Arc<ReadsOnDrop>;

/// B24, `run_in_executor`: a job its executor drops unrun on another thread resolves to
/// "dropped"; the copy of the context it carried, whose values it alone held, drops them
/// inside that copy.
#[test]
fn a_job_dropped_unrun_on_another_thread_drops_its_values_inside_its_context() {
    JOB_DROPS.lock().unwrap().clear();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let outcome = runtime
        .block_on(async {
            contextvars::spawn(async {
                let _ = V00.set(17);
                let _ = HELD.set(Arc::new(ReadsOnDrop));
                let job = contextvars::run_in_executor(
                    |job| {
                        std::thread::spawn(move || drop(job)).join().unwrap();
                    },
                    || 1,
                );
                // The task's own value still holds `HELD` here; drop it.
                drop(HELD.set(Arc::new(ReadsOnDrop)));
                job.await.map_err(|err| err.is_dropped())
            })
            .await
        })
        .unwrap();
    assert_eq!(outcome, Err(true));
    // One value dropped by the task's reset above or at its end, one by the dropped job:
    // each inside a context where `V00` is 17.
    assert_eq!(*JOB_DROPS.lock().unwrap(), [Some(17), Some(17)]);
}

/// B26, B38: in a task spawned without a context, metadata reads empty (the spawner's
/// entries never show) and a write fails loudly (`try_` form: an error), leaving nothing.
#[test]
fn metadata_in_a_task_without_a_context_reads_empty_and_refuses_writes() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let seen = runtime
        .block_on(async {
            contextvars::spawn(async {
                set_metadata("tenant", "acme");
                let plain = tokio::spawn(async {
                    let before = get_all_metadata();
                    let refused = try_set_metadata_with("x", "y", MetadataFlags::NONE).is_err();
                    let set_panics = std::panic::catch_unwind(|| set_metadata("x", "y")).is_err();
                    (before, refused, set_panics, get_metadata("x"))
                })
                .await
                .unwrap();
                (plain, get_metadata("tenant"))
            })
            .await
        })
        .unwrap();
    assert_eq!(
        seen,
        (
            (std::collections::BTreeMap::default(), true, true, None),
            Some("acme".into())
        )
    );
}

/// B25 with `gather`: a task spawned with `contextvars::spawn` from a gather branch starts
/// from that branch's context (its own set included), not the caller's nor a sibling's.
#[test]
fn a_task_spawned_from_a_gather_branch_inherits_that_branch() {
    static CHECKED: AtomicUsize = AtomicUsize::new(0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    runtime
        .block_on(async {
            contextvars::spawn(async {
                let _ = V01.set(u64::MAX);
                let seen = contextvars::gather((0..200u64).map(|id| async move {
                    let _ = V01.set(id);
                    tokio::task::yield_now().await;
                    let child = contextvars::spawn(async move {
                        tokio::task::yield_now().await;
                        V01.get()
                    });
                    let _ = V01.set(id + 1000);
                    let got = child.await.unwrap();
                    CHECKED.fetch_add(1, Ordering::Relaxed);
                    got
                }))
                .await;
                assert_eq!(seen, (0..200).map(Some).collect::<Vec<_>>());
                assert_eq!(V01.get(), Some(u64::MAX));
            })
            .await
        })
        .unwrap();
    assert_eq!(CHECKED.load(Ordering::Relaxed), 200);
}

/// Pending once, then ready: a yield with no runtime.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            std::task::Poll::Ready(())
        } else {
            self.0 = true;
            std::task::Poll::Pending
        }
    }
}

type Job = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// One wrapped future's random program of sets, out-of-order resets and guards held across
/// yields, checking after every step and every yield that it reads its own values only.
fn program(id: u64) -> Job {
    Box::pin(
        async move {
            let mut rng = Rng::new(id + 100);
            let mut expected: Option<u64> = None;
            let mut tokens = Vec::new();
            for step in 0..80u64 {
                match rng.below(4) {
                    0 => {
                        let value = id * 1000 + step;
                        tokens.push((V00.set(value), expected));
                        expected = Some(value);
                    }
                    1 if !tokens.is_empty() => {
                        let at = usize::try_from(rng.below(tokens.len() as u64)).unwrap();
                        let (token, old) = tokens.swap_remove(at);
                        V00.reset(token).unwrap();
                        expected = old;
                    }
                    2 => {
                        let guard = V03.scoped(id);
                        YieldOnce(false).await;
                        assert_eq!(V03.get(), Some(id));
                        drop(guard);
                        assert_eq!(V03.get(), None);
                    }
                    _ => {}
                }
                assert_eq!(V00.get(), expected);
                assert_eq!(
                    V02.get(),
                    None,
                    "a worker thread's value leaked into a future"
                );
                YieldOnce(false).await;
                assert_eq!(V00.get(), expected);
                assert!(V00.with(|v| v == expected.as_ref()));
                assert_eq!(
                    V02.get(),
                    None,
                    "a worker thread's value leaked into a future"
                );
            }
        }
        .in_current_context(),
    )
}

/// B23, B24, B31 and the read cache (S8): eight wrapped futures, each running a random
/// program of sets, out-of-order resets and guards, are polled one poll at a time in random
/// order on three worker threads (which have values of their own) and on the test's
/// thread: each future reads only its own values wherever it resumes, and each thread's own
/// value is there between polls and never inside one.
#[test]
fn wrapped_futures_polled_in_random_order_on_random_threads_read_only_their_own_values() {
    let waker = std::task::Waker::noop();
    let workers: Vec<_> = (0..3u64)
        .map(|worker| {
            let (send, receive) =
                std::sync::mpsc::channel::<(Job, std::sync::mpsc::Sender<(Job, bool)>)>();
            let thread = std::thread::spawn(move || {
                let _ = V02.set(worker + 1);
                for (mut job, reply) in receive {
                    assert_eq!(V02.get(), Some(worker + 1));
                    assert_eq!(V00.get(), None);
                    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                    let done = job.as_mut().poll(&mut cx).is_ready();
                    assert_eq!(V02.get(), Some(worker + 1));
                    assert_eq!(V00.get(), None);
                    assert_eq!(V03.get(), None);
                    reply.send((job, done)).unwrap();
                }
            });
            (send, thread)
        })
        .collect();
    let mut jobs: Vec<Option<Job>> = (0..8).map(|id| Some(program(id))).collect();
    let mut rng = Rng::new(7);
    let mut cx = std::task::Context::from_waker(waker);
    while jobs.iter().any(Option::is_some) {
        let at = usize::try_from(rng.below(jobs.len() as u64)).unwrap();
        let Some(mut job) = jobs[at].take() else {
            continue;
        };
        let where_ = rng.below(4);
        let done = if where_ == 3 {
            job.as_mut().poll(&mut cx).is_ready()
        } else {
            let (reply, answer) = std::sync::mpsc::channel();
            let worker = usize::try_from(where_).unwrap();
            workers[worker].0.send((job, reply)).unwrap();
            let (back, done) = answer.recv().expect("the worker panicked");
            job = back;
            done
        };
        assert_eq!(V00.get(), None);
        if !done {
            jobs[at] = Some(job);
        }
    }
    for (send, thread) in workers {
        drop(send);
        thread.join().unwrap();
    }
}
