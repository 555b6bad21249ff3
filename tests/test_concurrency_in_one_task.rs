//! Concurrency inside one task: the branches of `tokio::join!`, `tokio::select!`,
//! `join_all` and `FuturesUnordered` are polled by one task and share its context, and the
//! tested ways to give each branch a context of its own: `.in_current_context()`, `scope`,
//! `#[preserve_context]` and `contextvars::gather`, which polls only the branches that were
//! woken.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::time::Duration;

use contextvars::{Context, FutureExt, context_var, preserve_context};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

mod support;
use support::Rng;

#[context_var]
static REQUEST: u32;

#[context_var]
static WINNER: &'static str;

#[context_var]
static DEPTH: u32 = 0;

/// Yields a random number of times (0 to 3), so that branches interleave differently.
async fn random_yields(rng: &mut Rng) {
    for _ in 0..rng.below(4) {
        tokio::task::yield_now().await;
    }
}

/// Sets `REQUEST = id`, lets other branches run, and returns what it reads back (with a
/// scope guard of its own in between).
async fn branch(id: u32, seed: u64) -> (Option<u32>, u32) {
    let mut rng = Rng::new(seed);
    let _ = REQUEST.set(id);
    random_yields(&mut rng).await;
    let depth = {
        let _guard = DEPTH.scoped(id);
        random_yields(&mut rng).await;
        DEPTH.get()
    };
    random_yields(&mut rng).await;
    assert_eq!(
        DEPTH.get(),
        0,
        "branch {id}: its guard did not restore its depth"
    );
    (REQUEST.get(), depth)
}

// What the docs say first: plain branches share the task's context.
#[tokio::test]
async fn join_branches_share_the_task_context() {
    let a = async {
        let _ = REQUEST.set(1);
        tokio::task::yield_now().await;
        REQUEST.get()
    };
    let b = async {
        let _ = REQUEST.set(2);
        REQUEST.get()
    };
    let (a, b) = tokio::join!(a, b);
    assert_eq!(
        (a, b),
        (Some(2), Some(2)),
        "branch a reads branch b's value"
    );
    assert_eq!(REQUEST.get(), Some(2), "and the caller does too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn join_branches_wrapped_with_in_current_context_keep_their_own_values() {
    let tasks: Vec<_> = (0..200u32)
        .map(|round| {
            contextvars::spawn(async move {
                let _outer = REQUEST.set(0);
                let seed = u64::from(round) * 3;
                let (a, b, c) = tokio::join!(
                    branch(1, seed).in_current_context(),
                    branch(2, seed + 1).in_current_context(),
                    branch(3, seed + 2).in_current_context(),
                );
                assert_eq!((a, b, c), ((Some(1), 1), (Some(2), 2), (Some(3), 3)));
                assert_eq!((REQUEST.get(), DEPTH.get()), (Some(0), 0));
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn join_branches_with_scope_see_their_own_value() {
    async fn read_after_yield() -> Option<u32> {
        tokio::task::yield_now().await;
        REQUEST.get()
    }
    let (a, b) = tokio::join!(
        REQUEST.scope(1, read_after_yield()),
        REQUEST.scope(2, read_after_yield()),
    );
    assert_eq!((a, b), (Some(1), Some(2)));
    assert_eq!(REQUEST.get(), None);
}

#[preserve_context]
async fn preserved_branch(id: u32, seed: u64) -> (Option<u32>, u32) {
    branch(id, seed).await
}

#[tokio::test]
async fn join_branches_that_are_preserve_context_functions_keep_their_own_values() {
    let _outer = REQUEST.set(0);
    let (a, b) = tokio::join!(preserved_branch(1, 1), preserved_branch(2, 2));
    assert_eq!((a, b), ((Some(1), 1), (Some(2), 2)));
    assert_eq!(REQUEST.get(), Some(0));
}

// Under `select!` the losing branch is dropped when the winner completes. Its scope guard
// restores its own variable only: the winner's set of another variable stays.
#[tokio::test]
async fn the_losing_select_branch_guard_leaves_the_winners_set_alone() {
    Context::new()
        .run(|| {
            async {
                tokio::select! {
                    biased;
                    () = async {
                        let _guard = DEPTH.scoped(5);
                        std::future::pending::<()>().await;
                    } => unreachable!("the first branch never completes"),
                    () = async {
                        tokio::task::yield_now().await;
                        let _ = WINNER.set("second");
                    } => {}
                }
                assert_eq!(
                    WINNER.get(),
                    Some("second"),
                    "the loser's guard undid the winner's set"
                );
                assert_eq!(
                    DEPTH.get(),
                    0,
                    "the loser's guard restored its own variable"
                );
            }
            .in_current_context()
        })
        .await;
}

#[tokio::test]
async fn select_branches_wrapped_with_in_current_context_keep_their_sets_apart() {
    let _outer = REQUEST.set(0);
    let winner = tokio::select! {
        biased;
        seen = async {
            let _ = REQUEST.set(1);
            std::future::pending::<()>().await;
            REQUEST.get()
        }.in_current_context() => seen,
        seen = async {
            tokio::task::yield_now().await;
            let _ = REQUEST.set(2);
            REQUEST.get()
        }.in_current_context() => seen,
    };
    assert_eq!(winner, Some(2));
    assert_eq!(REQUEST.get(), Some(0), "no branch's set reached the caller");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn join_all_with_a_context_per_future_keeps_each_value() {
    let seen = contextvars::spawn(async {
        let _outer = REQUEST.set(0);
        let seen = futures_util::future::join_all(
            (1..=100u32).map(|id| branch(id, u64::from(id)).in_current_context()),
        )
        .await;
        assert_eq!(REQUEST.get(), Some(0));
        seen
    })
    .await
    .unwrap();
    let expected: Vec<_> = (1..=100u32).map(|id| (Some(id), id)).collect();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn futures_unordered_with_a_context_per_future_keeps_each_value() {
    contextvars::spawn(async {
        let mut running: FuturesUnordered<_> = (1..=100u32)
            .map(|id| async move { (id, branch(id, u64::from(id) + 7).await) }.in_current_context())
            .collect();
        let mut finished = 0;
        while let Some((id, seen)) = running.next().await {
            assert_eq!(seen, (Some(id), id));
            finished += 1;
        }
        assert_eq!(finished, 100);
        assert_eq!(REQUEST.get(), None);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gather_gives_each_branch_its_own_context() {
    let tasks: Vec<_> = (0..50u32)
        .map(|round| {
            contextvars::spawn(async move {
                let _outer = REQUEST.set(round);
                let seen = contextvars::gather(
                    (1..=20u32).map(|id| branch(id, u64::from(round * 20 + id))),
                )
                .await;
                let expected: Vec<_> = (1..=20u32).map(|id| (Some(id), id)).collect();
                assert_eq!(seen, expected);
                assert_eq!((REQUEST.get(), DEPTH.get()), (Some(round), 0));
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn gather_branches_start_from_the_callers_context_at_the_call() {
    let _outer = REQUEST.set(9);
    let gathered = contextvars::gather((0..2).map(|_| async { REQUEST.get() }));
    let _later = REQUEST.set(10);
    assert_eq!(gathered.await, [Some(9), Some(9)]);
}

#[tokio::test]
async fn gather_of_nothing_is_empty() {
    let nothing: Vec<std::future::Ready<u32>> = Vec::new();
    assert!(contextvars::gather(nothing).await.is_empty());
}

/// The guard-per-branch pattern that used to leave stale values: two branches of one join,
/// each with a guard on the same variable, interleaved. With a context per branch, each
/// guard restores its own branch's value and the caller sees its own throughout.
#[tokio::test]
async fn interleaved_guards_in_wrapped_branches_leave_no_stale_values() {
    fn guarded(id: u32) -> impl Future<Output = u32> {
        async move {
            let _guard = DEPTH.scoped(id);
            tokio::task::yield_now().await;
            let seen = DEPTH.get();
            tokio::task::yield_now().await;
            seen
        }
        .in_current_context()
    }
    let (a, b) = tokio::join!(guarded(1), guarded(2));
    assert_eq!((a, b, DEPTH.get()), (1, 2, 0));
}

// ---------------------------------------------------------------------------------------
// `gather` polls only the branches that were woken.
// ---------------------------------------------------------------------------------------

/// Polls and wakes of one branch.
#[derive(Default)]
struct Counts {
    polls: AtomicUsize,
    wakes: AtomicUsize,
}

/// A waker that counts its wakes and passes them on.
struct CountingWaker {
    inner: Waker,
    counts: Arc<Counts>,
}

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.counts.wakes.fetch_add(1, Ordering::SeqCst);
        self.inner.wake_by_ref();
    }
}

/// `inner`, counting its polls and the wakes of the wakers it is polled with.
struct Counted<F> {
    inner: Pin<Box<F>>,
    counts: Arc<Counts>,
    /// The counting waker `inner` is polled with, and the waker it wraps: kept while the
    /// caller's waker stays the same, so that `inner` sees one waker as it would unwrapped.
    waker: Option<(Waker, Waker)>,
}

impl<F> Counted<F> {
    fn new(inner: F) -> (Self, Arc<Counts>) {
        let counts = Arc::new(Counts::default());
        let counted = Counted {
            inner: Box::pin(inner),
            counts: Arc::clone(&counts),
            waker: None,
        };
        (counted, counts)
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.counts.polls.fetch_add(1, Ordering::SeqCst);
        let waker = match &this.waker {
            Some((counting, inner)) if inner.will_wake(cx.waker()) => counting.clone(),
            _ => {
                let counting = Waker::from(Arc::new(CountingWaker {
                    inner: cx.waker().clone(),
                    counts: Arc::clone(&this.counts),
                }));
                this.waker = Some((counting.clone(), cx.waker().clone()));
                counting
            }
        };
        this.inner
            .as_mut()
            .poll(&mut TaskContext::from_waker(&waker))
    }
}

/// Every branch was polled once to start and at most once per wake of its own: a wake of
/// one branch never polls another.
fn assert_polled_only_when_woken(counts: &[Arc<Counts>]) {
    for (i, counts) in counts.iter().enumerate() {
        let (polls, wakes) = (
            counts.polls.load(Ordering::SeqCst),
            counts.wakes.load(Ordering::SeqCst),
        );
        assert!(
            polls <= 1 + wakes,
            "branch {i} was polled {polls} times for {wakes} wakes"
        );
    }
}

/// Pending until its gate opens; the gate wakes whoever waits.
#[derive(Clone, Default)]
struct Gate(Arc<Mutex<(bool, Option<Waker>)>>);

impl Gate {
    /// Opens the gate and wakes the waiter (again, if it was open already).
    fn open(&self) {
        let waker = {
            let mut state = self.0.lock().unwrap();
            state.0 = true;
            state.1.clone()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Future for Gate {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let mut state = self.0.lock().unwrap();
        if state.0 {
            Poll::Ready(())
        } else {
            state.1 = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// A task waker that counts how often the gather woke its task.
#[derive(Default)]
struct TaskWakes(AtomicUsize);

impl Wake for TaskWakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn gather_polls_the_woken_branches_and_no_other() {
    let gates: Vec<Gate> = (0..100).map(|_| Gate::default()).collect();
    let (branches, counts): (Vec<_>, Vec<_>) = gates
        .iter()
        .enumerate()
        .map(|(i, gate)| {
            let gate = gate.clone();
            Counted::new(async move {
                gate.await;
                i
            })
        })
        .unzip();
    let task = Arc::new(TaskWakes::default());
    let waker = Waker::from(Arc::clone(&task));
    let mut cx = TaskContext::from_waker(&waker);
    let mut gathered = contextvars::gather(branches);
    let polls = |counts: &[Arc<Counts>]| -> Vec<usize> {
        counts
            .iter()
            .map(|c| c.polls.load(Ordering::SeqCst))
            .collect()
    };

    assert!(Pin::new(&mut gathered).poll(&mut cx).is_pending());
    assert_eq!(
        polls(&counts),
        vec![1; 100],
        "each branch is polled once to start"
    );

    // A poll without a wake polls nothing.
    assert!(Pin::new(&mut gathered).poll(&mut cx).is_pending());
    assert_eq!(polls(&counts), vec![1; 100]);

    // Two branches woken (one twice): those two are polled, once each, and the task was woken.
    gates[7].open();
    gates[42].open();
    gates[42].open();
    assert_eq!(counts[42].wakes.load(Ordering::SeqCst), 2);
    assert!(
        task.0.load(Ordering::SeqCst) >= 1,
        "the gather's task was woken"
    );
    assert!(Pin::new(&mut gathered).poll(&mut cx).is_pending());
    let mut expected = vec![1; 100];
    expected[7] = 2;
    expected[42] = 2;
    assert_eq!(polls(&counts), expected);

    // The rest, in reverse order; the outputs keep the order given.
    for gate in gates.iter().rev() {
        gate.open();
    }
    let Poll::Ready(outputs) = Pin::new(&mut gathered).poll(&mut cx) else {
        panic!("every branch is ready");
    };
    assert_eq!(outputs, (0..100).collect::<Vec<_>>());
    expected = vec![2; 100];
    assert_eq!(
        polls(&counts),
        expected,
        "a finished branch is never polled again"
    );
}

#[tokio::test]
async fn gather_of_ten_thousand_sleepers_polls_each_once_per_wake() {
    let _outer = REQUEST.set(0);
    let (branches, counts): (Vec<_>, Vec<_>) = (0..10_000_u32)
        .map(|i| {
            Counted::new(async move {
                let _ = REQUEST.set(i);
                tokio::time::sleep(Duration::from_millis(u64::from(1 + i % 20))).await;
                REQUEST.get()
            })
        })
        .unzip();
    let seen = contextvars::gather(branches).await;
    assert!(seen.iter().zip(0..).all(|(seen, i)| *seen == Some(i)));
    assert_eq!(REQUEST.get(), Some(0));
    assert_polled_only_when_woken(&counts);
    let polls: usize = counts.iter().map(|c| c.polls.load(Ordering::SeqCst)).sum();
    assert!(polls <= 2 * 10_000, "{polls} polls for 10,000 sleepers");
}

#[tokio::test]
async fn gather_of_ten_thousand_branches_sharing_four_permits_polls_each_once_per_wake() {
    let permits = Arc::new(tokio::sync::Semaphore::new(4));
    let (branches, counts): (Vec<_>, Vec<_>) = (0..10_000_u32)
        .map(|i| {
            let permits = Arc::clone(&permits);
            Counted::new(async move {
                let _permit = permits.acquire().await.unwrap();
                let _ = REQUEST.set(i);
                tokio::task::yield_now().await;
                REQUEST.get()
            })
        })
        .unzip();
    let seen = contextvars::gather(branches).await;
    assert!(seen.iter().zip(0..).all(|(seen, i)| *seen == Some(i)));
    assert_polled_only_when_woken(&counts);
    let polls: usize = counts.iter().map(|c| c.polls.load(Ordering::SeqCst)).sum();
    assert!(polls <= 3 * 10_000, "{polls} polls for 10,000 branches");
}

/// What each probe saw when dropped: its id, and `REQUEST` then.
type Drops = Arc<Mutex<Vec<(u32, Option<u32>)>>>;

/// Records, when dropped, what `REQUEST` was then.
struct DropProbe {
    id: u32,
    seen: Drops,
}

impl Drop for DropProbe {
    fn drop(&mut self) {
        self.seen.lock().unwrap().push((self.id, REQUEST.get()));
    }
}

/// A branch that sets its id, holds a probe across random yields, sleeps and a wake from
/// another task (another thread, on a multi-thread runtime), then reads its id back.
async fn probed_branch(id: u32, seed: u64, drops: Drops) -> Option<u32> {
    let mut rng = Rng::new(seed);
    let _ = REQUEST.set(id);
    let _probe = DropProbe { id, seen: drops };
    random_yields(&mut rng).await;
    tokio::time::sleep(Duration::from_micros(rng.below(500))).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        tokio::task::yield_now().await;
        let _ = tx.send(());
    });
    let _ = rx.await;
    random_yields(&mut rng).await;
    REQUEST.get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gather_keeps_branches_apart_under_random_wakes_from_other_threads() {
    let tasks: Vec<_> = (0..40_u32)
        .map(|round| {
            contextvars::spawn(async move {
                let _outer = REQUEST.set(1_000 + round);
                let seen = Arc::new(Mutex::new(Vec::new()));
                let outputs =
                    contextvars::gather((0..50_u32).map(|id| {
                        probed_branch(id, u64::from(round * 50 + id), Arc::clone(&seen))
                    }))
                    .await;
                assert_eq!(outputs, (0..50).map(Some).collect::<Vec<_>>());
                assert_eq!(REQUEST.get(), Some(1_000 + round));
                let mut seen = seen.lock().unwrap().clone();
                seen.sort_unstable();
                assert_eq!(seen, (0..50).map(|id| (id, Some(id))).collect::<Vec<_>>());
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_branch_leaves_every_other_branch_dropped_in_its_own_context() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let probes = Arc::clone(&seen);
    let task = contextvars::spawn(async move {
        let _outer = REQUEST.set(1_000);
        contextvars::gather((0..20_u32).map(|id| {
            let probes = Arc::clone(&probes);
            async move {
                let _ = REQUEST.set(id);
                let _probe = DropProbe { id, seen: probes };
                tokio::task::yield_now().await;
                assert_ne!(id, 13, "branch 13 fails");
                std::future::pending::<()>().await;
            }
        }))
        .await
    });
    let err = task.await.expect_err("the gather's task panicked");
    assert!(err.is_panic());
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, (0..20).map(|id| (id, Some(id))).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_gather_drops_each_branch_in_its_own_context() {
    let _outer = REQUEST.set(1_000);
    // Dropped by a select that another branch wins.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let gathered = contextvars::gather((0..30_u32).map(|id| {
        let seen = Arc::clone(&seen);
        async move {
            let _ = REQUEST.set(id);
            let _probe = DropProbe { id, seen };
            tokio::task::yield_now().await;
            std::future::pending::<()>().await;
        }
    }));
    tokio::select! {
        _ = gathered => unreachable!("the branches never finish"),
        () = tokio::time::sleep(Duration::from_millis(5)) => {}
    }
    let mut dropped = seen.lock().unwrap().clone();
    dropped.sort_unstable();
    assert_eq!(
        dropped,
        (0..30).map(|id| (id, Some(id))).collect::<Vec<_>>()
    );
    assert_eq!(REQUEST.get(), Some(1_000));

    // Dropped with its task, aborted.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let probes = Arc::clone(&seen);
    let (started, running) = tokio::sync::oneshot::channel();
    let task = contextvars::spawn(async move {
        let gathered = contextvars::gather((0..30_u32).map(|id| {
            let probes = Arc::clone(&probes);
            async move {
                let _ = REQUEST.set(id);
                let _probe = DropProbe { id, seen: probes };
                std::future::pending::<()>().await;
            }
        }));
        let mut gathered = std::pin::pin!(gathered);
        std::future::poll_fn(|cx| {
            let _ = gathered.as_mut().poll(cx);
            Poll::Ready(())
        })
        .await;
        let _ = started.send(());
        gathered.await
    });
    running.await.unwrap();
    task.abort();
    assert!(task.await.expect_err("aborted").is_cancelled());
    let mut dropped = seen.lock().unwrap().clone();
    dropped.sort_unstable();
    assert_eq!(
        dropped,
        (0..30).map(|id| (id, Some(id))).collect::<Vec<_>>()
    );
}
