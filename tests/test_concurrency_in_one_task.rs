//! Concurrency inside one task: the branches of `tokio::join!`, `tokio::select!`,
//! `join_all` and `FuturesUnordered` are polled by one task and share its context, and the
//! tested ways to give each branch a context of its own: `.in_current_context()`, `scope`,
//! `#[preserve_context]` and `contextvars::gather`.

use std::future::Future;

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
