//! Tokens (SPEC S3, B10–B14): `old_value`, `var`, reset to "unset", out-of-order resets,
//! tokens refused by other contexts, and tokens moved between threads and tasks.
//! (A token used twice or on another variable does not compile: see `tests/ui`.)

use std::sync::mpsc;

use contextvars::{Context, ResetError, Token, context_var};

#[context_var]
static USER: String;

#[context_var]
static LEVEL: u32 = 0;

#[context_var(name = "tok.moved")]
static MOVED: u32;

#[context_var]
static OTHER: u32;

fn assert_send_sync_static<T: Send + Sync + 'static>(_: &T) {}

// B10: `None` is Python's `Token.MISSING`; the default does not count as a previous value.
#[test]
fn old_value_is_none_where_unset_and_the_previous_value_where_set() {
    Context::new().run(|| {
        let first = USER.set("ann".to_string());
        assert_eq!(first.old_value(), None);
        let second = USER.set("bob".to_string());
        assert_eq!(second.old_value().map(String::as_str), Some("ann"));
        USER.reset(second).unwrap();
        USER.reset(first).unwrap();

        let first = LEVEL.set(1);
        assert_eq!(first.old_value(), None, "the default is not an old value");
        let second = LEVEL.set(2);
        assert_eq!(second.old_value(), Some(&1));
        LEVEL.reset(second).unwrap();
        LEVEL.reset(first).unwrap();
    });
}

// B10: `var()` is the variable itself, and knows its name.
#[test]
fn token_var_is_the_variable_that_was_set() {
    Context::new().run(|| {
        let token: Token<USER> = USER.set("ann".to_string());
        assert!(std::ptr::eq(token.var(), &raw const USER));
        assert_eq!(token.var().name(), "USER");
        let moved = MOVED.set(1);
        assert_eq!(moved.var().name(), "tok.moved");
        let debug = format!("{moved:?}");
        assert!(debug.contains("tok.moved"), "{debug}");
        MOVED.reset(moved).unwrap();
        USER.reset(token).unwrap();
    });
}

// B11: resetting to "unset" removes the key from the mapping (CPython test_context_getset_1).
#[test]
fn reset_to_unset_removes_the_variable_from_the_mapping() {
    Context::new().run(|| {
        let token = USER.set("ann".to_string());
        let level = LEVEL.set(4);
        let ctx = Context::current();
        assert!(ctx.contains(&USER) && ctx.contains(&LEVEL));
        assert_eq!(ctx.len(), 2);

        USER.reset(token).unwrap();
        LEVEL.reset(level).unwrap();
        let ctx = Context::current();
        assert!(!ctx.contains(&USER));
        assert!(!ctx.contains(&LEVEL));
        assert_eq!(ctx.get(&LEVEL), None);
        assert!(ctx.is_empty(), "{ctx:?}");
        assert_eq!(LEVEL.get(), 0, "back to the default");
        assert!(!USER.is_set());
    });
}

// B11: a reset restores a previous value, not "unset".
#[test]
fn reset_restores_the_previous_value() {
    Context::new().run(|| {
        let _outer = USER.set("ann".to_string());
        let token = USER.set("bob".to_string());
        USER.reset(token).unwrap();
        assert_eq!(USER.get().as_deref(), Some("ann"));
        assert_eq!(
            Context::current().get(&USER).map(String::as_str),
            Some("ann")
        );
    });
}

// B11: out of order, each reset restores its own token's old value.
#[test]
fn out_of_order_resets_restore_each_tokens_old_value() {
    Context::new().run(|| {
        let t1 = LEVEL.set(1); // unset -> 1
        let t2 = LEVEL.set(2); // 1 -> 2
        let t3 = LEVEL.set(3); // 2 -> 3
        LEVEL.reset(t2).unwrap();
        assert_eq!(LEVEL.get(), 1);
        LEVEL.reset(t3).unwrap();
        assert_eq!(LEVEL.get(), 2);
        LEVEL.reset(t1).unwrap();
        assert!(!LEVEL.is_set());

        let a = USER.set("a".to_string());
        let b = USER.set("b".to_string());
        USER.reset(a).unwrap();
        assert!(!USER.is_set(), "the first token's old value is 'unset'");
        USER.reset(b).unwrap();
        assert_eq!(USER.get().as_deref(), Some("a"));
    });
}

// B14 (CPython test_context_getset_4): a token made in another `Context` is refused, says so,
// and changes neither context.
#[test]
fn token_from_another_context_is_refused_and_changes_nothing() {
    Context::new().run(|| {
        let _mine = USER.set("mine".to_string());
        let mut other = Context::new();
        let token = other.run(|| USER.set("theirs".to_string()));

        let err = USER.reset(token).unwrap_err();
        assert_eq!(err, ResetError::OtherContext { var: "USER" });
        let message = err.to_string();
        assert!(
            message.contains("`USER`") && message.contains("different context"),
            "{message}"
        );

        assert_eq!(USER.get().as_deref(), Some("mine"));
        assert_eq!(other.get(&USER).map(String::as_str), Some("theirs"));
        assert_eq!(Context::current().len(), 1);
    });
}

// B14: a copy of the context that made the token is a different context.
#[test]
fn token_is_refused_by_a_copy_of_its_context() {
    Context::new().run(|| {
        let token = LEVEL.set(5);
        let mut copy = Context::current();
        let (token, err) = copy.run(|| {
            // The error path hands nothing back; make a fresh token to keep for later.
            let err = LEVEL.reset(token).unwrap_err();
            (LEVEL.set(6), err)
        });
        assert!(matches!(err, ResetError::OtherContext { var: "LEVEL" }));
        assert_eq!(copy.get(&LEVEL), Some(&6));
        assert_eq!(
            LEVEL.get(),
            5,
            "the refused reset changed the caller's context"
        );
        // And the copy's token is refused here.
        assert!(LEVEL.reset(token).is_err());
        assert_eq!(LEVEL.get(), 5);
    });
}

// B14: running the same `Context` value again is the same context.
#[test]
fn token_is_accepted_when_the_same_context_is_run_again() {
    let mut ctx = Context::new().with_value(&LEVEL, 1);
    let token = ctx.run(|| LEVEL.set(2));
    assert_eq!(token.old_value(), Some(&1));
    ctx.run(|| LEVEL.reset(token)).unwrap();
    assert_eq!(ctx.get(&LEVEL), Some(&1));

    let token = ctx.run(|| LEVEL.set(3));
    let mut clone = ctx.clone();
    let token = match clone.run(|| LEVEL.reset(token)) {
        Ok(()) => panic!("a clone accepted its original's token"),
        // Nothing changed in the clone, and the token is gone: make the point with a new one.
        Err(_) => ctx.run(|| LEVEL.set(4)),
    };
    assert_eq!(clone.get(&LEVEL), Some(&3));
    ctx.run(|| LEVEL.reset(token)).unwrap();
    assert_eq!(ctx.get(&LEVEL), Some(&3));
}

// B10 + B14: a token is `Send + 'static`; it can travel to another thread, which refuses it,
// and it still works back in the context that made it.
#[test]
fn token_moves_between_threads_and_only_its_own_context_accepts_it() {
    let (to_thread, thread_rx) = mpsc::channel::<Token<MOVED>>();
    let (to_main, main_rx) = mpsc::channel::<(Token<MOVED>, Option<ResetError>, Option<u32>)>();
    let thread = std::thread::spawn(move || {
        let _own = MOVED.set(100);
        let token = thread_rx.recv().unwrap();
        // Refused, and the token is consumed: report what happened and send a fresh one back.
        let err = MOVED.reset(token).err();
        let value = MOVED.get();
        to_main.send((MOVED.set(101), err, value)).unwrap();
    });

    Context::new().run(|| {
        let first = MOVED.set(1);
        assert_send_sync_static(&first);
        to_thread.send(first).unwrap();
        let (theirs, err, their_value) = main_rx.recv().unwrap();
        thread.join().unwrap();
        assert!(
            matches!(err, Some(ResetError::OtherContext { var: "tok.moved" })),
            "{err:?}"
        );
        assert_eq!(
            their_value,
            Some(100),
            "the refused reset changed the other thread"
        );
        assert_eq!(
            MOVED.get(),
            Some(1),
            "the refused reset changed this thread"
        );
        assert!(
            MOVED.reset(theirs).is_err(),
            "a token from another thread was accepted"
        );
        assert_eq!(MOVED.get(), Some(1));

        // A token that went away and came back still works at home.
        let second = MOVED.set(2);
        let second = std::thread::spawn(move || second).join().unwrap();
        MOVED.reset(second).unwrap();
        assert_eq!(MOVED.get(), Some(1));
    });
}

// B10 + B14: a token held across awaits in a spawned task resets on whichever worker the task
// resumes; moved to another task, it is refused there.
#[test]
fn token_held_across_awaits_and_moved_between_tasks() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..64u32)
            .map(|i| {
                contextvars::spawn(async move {
                    let token = MOVED.set(i);
                    for _ in 0..(i % 7) {
                        tokio::task::yield_now().await;
                    }
                    assert_eq!(MOVED.get(), Some(i));
                    MOVED.reset(token).map(|()| MOVED.get())
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), Ok(None));
        }

        let (tx, rx) = tokio::sync::oneshot::channel::<Token<MOVED>>();
        let (back_tx, back_rx) = tokio::sync::oneshot::channel();
        let owner = contextvars::spawn(async move {
            let _base = MOVED.set(1);
            tx.send(MOVED.set(2)).unwrap();
            let refused: Option<ResetError> = back_rx.await.unwrap();
            (refused, MOVED.get())
        });
        let thief = contextvars::spawn(async move {
            let token = rx.await.unwrap();
            let _own = OTHER.set(9);
            let err = MOVED.reset(token).err();
            back_tx.send(err).unwrap();
            (MOVED.get(), OTHER.get())
        });
        assert_eq!(thief.await.unwrap(), (None, Some(9)));
        let (refused, owner_value) = owner.await.unwrap();
        assert!(
            matches!(refused, Some(ResetError::OtherContext { .. })),
            "{refused:?}"
        );
        assert_eq!(
            owner_value,
            Some(2),
            "the refused reset changed the owner task"
        );
    });
}

// B10: dropping a token unused leaves the value in place.
#[test]
fn dropping_a_token_keeps_the_value() {
    Context::new().run(|| {
        drop(USER.set("kept".to_string()));
        assert_eq!(USER.get().as_deref(), Some("kept"));
    });
}
