//! Hostile tests of context identity (B14, B16): a context stays itself when the value is
//! moved (into a box, another thread, a swapped slot), and a context allocated where a dead
//! one was is never taken for it by a token or a guard.

use std::panic::{AssertUnwindSafe, catch_unwind};

use contextvars::{Context, ResetError, context_var};

#[context_var]
static LEVEL: u32 = 0;

#[context_var]
static OTHER: u32;

/// B14: running the same `Context` value again is the same context, even after the value
/// was moved into a box, out of it, and onto another thread: its token resets there.
#[test]
fn a_moved_context_is_still_itself_for_its_tokens() {
    let mut ctx = Context::new();
    let token = ctx.run(|| LEVEL.set(5));
    let boxed = Box::new(ctx);
    let mut moved = *boxed;
    let (moved, reset) = std::thread::spawn(move || {
        let reset = moved.run(|| LEVEL.reset(token));
        (moved, reset)
    })
    .join()
    .unwrap();
    assert_eq!(reset, Ok(()));
    assert!(moved.is_empty());
}

/// B14: swapping two `Context` values swaps their identities with their bindings: each
/// token still resets in the context it was made in, wherever that now sits.
#[test]
fn swapped_contexts_keep_their_identities() {
    let mut a = Context::new();
    let mut b = Context::new();
    let token_a = a.run(|| LEVEL.set(1));
    let token_b = b.run(|| LEVEL.set(2));
    std::mem::swap(&mut a, &mut b);
    // `a` now holds what was `b`.
    assert!(matches!(
        a.run(|| LEVEL.reset(token_a)),
        Err(ResetError::OtherContext { .. })
    ));
    assert_eq!(a.run(|| LEVEL.reset(token_b)), Ok(()));
    assert!(a.is_empty());
    assert_eq!(b.get(&LEVEL), Some(&1));
}

/// B14, S9: a context dropped and a new one made (likely at the same address) are different
/// contexts: a token of the dead one is refused by the new one and changes nothing, many
/// times over.
#[test]
fn a_new_context_where_a_dead_one_was_refuses_its_tokens() {
    for round in 0..500u32 {
        let mut dead = Context::new();
        let token = dead.run(|| LEVEL.set(round));
        drop(dead);
        let mut fresh = Context::new().with_value(&OTHER, round);
        let outcome = fresh.run(|| {
            let _ = LEVEL.set(7);
            LEVEL.reset(token)
        });
        assert!(
            matches!(outcome, Err(ResetError::OtherContext { .. })),
            "round {round}: {outcome:?}"
        );
        assert_eq!(fresh.get(&LEVEL), Some(&7));
        assert_eq!(fresh.len(), 2);
    }
}

/// B14, S9: the same for a task: a token made in one `contextvars::spawn` task, which has
/// ended, is refused by every task spawned after it.
#[test]
fn a_token_of_an_ended_task_is_refused_by_later_tasks() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        for round in 0..200u32 {
            let token = contextvars::spawn(async move { LEVEL.set(round) })
                .await
                .unwrap();
            let outcome = contextvars::spawn(async move {
                let _ = LEVEL.set(9);
                (LEVEL.reset(token), LEVEL.get())
            })
            .await
            .unwrap();
            assert!(
                matches!(outcome.0, Err(ResetError::OtherContext { .. })),
                "round {round}: {outcome:?}"
            );
            assert_eq!(outcome.1, 9);
        }
    });
}

/// B15, B16: a guard made in one run of a context and dropped in a later run of the same
/// value restores that context; dropped in a clone of it, it panics and changes nothing.
#[test]
fn a_guard_escaping_run_restores_only_in_a_later_run_of_the_same_context() {
    let mut ctx = Context::new().with_value(&LEVEL, 1);
    let guard = ctx.run(|| LEVEL.scoped(2));
    assert_eq!(ctx.get(&LEVEL), Some(&2));
    let mut copy = ctx.clone();
    let in_copy = ctx.run(|| LEVEL.scoped(3));
    let refused = copy.run(|| catch_unwind(AssertUnwindSafe(|| drop(in_copy))).is_err());
    assert!(refused);
    assert_eq!(copy.get(&LEVEL), Some(&2));
    assert_eq!(ctx.get(&LEVEL), Some(&3));
    ctx.run(|| drop(guard));
    // The outer guard restores its own old value, 1, whatever was set meanwhile.
    assert_eq!(ctx.get(&LEVEL), Some(&1));
}
