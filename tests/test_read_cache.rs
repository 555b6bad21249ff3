//! `get` reads through a per-thread cache that remembers where each variable's value is in
//! the current context until that context changes. These tests make every kind of change
//! between two reads and check that the second read never sees a stale, freed or foreign
//! value. They also run under Miri (`scripts/miri`), which would report a read of freed
//! memory.

use std::sync::Mutex;
use std::sync::mpsc;

use contextvars::{Context, ContextVar, Key, NoDefault, context_var};

#[context_var]
static NAME: String;

#[context_var]
static LEVEL: u32 = 1;

#[context_var]
static OTHER: u32;

/// The value type of [`SLOT_SHARERS`].
#[derive(Debug)]
enum Sharer {}

impl Key for Sharer {
    type Value = String;
    type Default = NoDefault;
}

/// More variables than the cache has entries, so that many share an entry.
static SLOT_SHARERS: [ContextVar<Sharer>; 150] = [const { ContextVar::new("sharer") }; 150];

fn name() -> Option<String> {
    NAME.get()
}

#[test]
fn a_read_after_every_kind_of_change_sees_the_change() {
    let mut ctx = Context::new();
    ctx.run(|| {
        assert_eq!(name(), None);
        assert_eq!(LEVEL.get(), 1);

        let first = NAME.set("ann".to_string());
        assert_eq!(name().as_deref(), Some("ann"));
        assert_eq!(name().as_deref(), Some("ann"));

        let second = NAME.set("bob".to_string());
        assert_eq!(name().as_deref(), Some("bob"));

        // Another variable's write changes the context too.
        let level = LEVEL.set(5);
        assert_eq!((name().as_deref(), LEVEL.get()), (Some("bob"), 5));
        LEVEL.reset(level).unwrap();
        assert_eq!(LEVEL.get(), 1);

        // A nested context, and back.
        let mut inner = Context::new().with_value(&NAME, "cy".to_string());
        inner.run(|| assert_eq!(name().as_deref(), Some("cy")));
        assert_eq!(name().as_deref(), Some("bob"));
        Context::new().run(|| assert_eq!(name(), None));
        assert_eq!(name().as_deref(), Some("bob"));

        {
            let _guard = NAME.scoped("dee".to_string());
            assert_eq!(name().as_deref(), Some("dee"));
        }
        assert_eq!(name().as_deref(), Some("bob"));

        NAME.reset(second).unwrap();
        assert_eq!(name().as_deref(), Some("ann"));
        NAME.reset(first).unwrap();
        assert_eq!(name(), None);
    });
    // The context kept nothing, and the thread's own context never had anything.
    assert!(ctx.is_empty());
    assert_eq!(name(), None);
}

#[test]
fn variables_that_share_a_cache_entry_each_read_their_own_value() {
    let mut ctx = Context::new();
    for (i, var) in SLOT_SHARERS.iter().enumerate() {
        ctx = ctx.with_value(var, format!("value {i}"));
    }
    ctx.run(|| {
        for round in 0..3 {
            // Forwards and backwards, so that each entry is refilled by a different variable.
            for (i, var) in SLOT_SHARERS.iter().enumerate() {
                assert_eq!(var.get(), Some(format!("value {i}")), "round {round}");
            }
            for (i, var) in SLOT_SHARERS.iter().enumerate().rev() {
                assert_eq!(var.get(), Some(format!("value {i}")), "round {round}");
            }
        }
        // A write to one of them leaves the others as they were.
        let token = SLOT_SHARERS[70].set("changed".to_string());
        for (i, var) in SLOT_SHARERS.iter().enumerate() {
            let expected = if i == 70 {
                "changed".to_string()
            } else {
                format!("value {i}")
            };
            assert_eq!(var.get(), Some(expected));
        }
        SLOT_SHARERS[70].reset(token).unwrap();
        assert_eq!(SLOT_SHARERS[70].get().as_deref(), Some("value 70"));
    });
}

#[test]
fn a_value_whose_context_was_dropped_is_never_read_again() {
    let mut first = Context::new().with_value(&NAME, "first".to_string());
    assert_eq!(first.run(name).as_deref(), Some("first"));
    // The only holder of "first" goes: its value is freed.
    drop(first);
    let mut second = Context::new().with_value(&NAME, "second".to_string());
    assert_eq!(second.run(name).as_deref(), Some("second"));
    assert_eq!(name(), None);
    // The same context, entered again after a value was replaced in it.
    let mut ctx = Context::new().with_value(&NAME, "old".to_string());
    assert_eq!(ctx.run(name).as_deref(), Some("old"));
    let mut ctx = ctx.with_value(&NAME, "new".to_string());
    assert_eq!(ctx.run(name).as_deref(), Some("new"));
}

/// Its `Clone` enters a context of its own and reads there, as a `Clone` impl may.
#[derive(Debug)]
struct Nosy {
    seen: Mutex<Vec<Option<u32>>>,
}

impl Clone for Nosy {
    fn clone(&self) -> Self {
        let inside = Context::new()
            .with_value(&OTHER, 5)
            .run(|| (OTHER.get(), NAME.get()));
        assert_eq!(inside, (Some(5), None));
        // And reads, in the context being read from, a variable sharing nothing with it.
        let outside = OTHER.get();
        self.seen.lock().unwrap().push(outside);
        Nosy {
            seen: Mutex::new(Vec::new()),
        }
    }
}

#[context_var]
static NOSY: Nosy;

#[test]
fn a_clone_impl_may_enter_a_context_and_read_while_its_value_is_read() {
    let mut ctx = Context::new()
        .with_value(
            &NOSY,
            Nosy {
                seen: Mutex::new(Vec::new()),
            },
        )
        .with_value(&OTHER, 9)
        .with_value(&NAME, "outer".to_string());
    ctx.run(|| {
        for _ in 0..3 {
            assert!(NOSY.get().is_some());
            assert_eq!(OTHER.get(), Some(9));
            assert_eq!(name().as_deref(), Some("outer"));
        }
        NOSY.with(|nosy| {
            assert_eq!(*nosy.unwrap().seen.lock().unwrap(), vec![Some(9); 3]);
        });
    });
}

/// Sends what `NAME` reads when it is dropped.
struct ReportOnDrop(mpsc::Sender<Option<String>>);

impl Drop for ReportOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(NAME.get());
    }
}

#[context_var]
static REPORTER: ReportOnDrop;

#[test]
fn a_read_while_the_threads_context_is_torn_down_finds_nothing() {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Set in the thread's own context and read, so that the cache knows where the value
        // is; then the thread ends and its context is destroyed with the values in it.
        let _name = NAME.set("doomed".to_string());
        let _reporter = REPORTER.set(ReportOnDrop(tx));
        assert_eq!(name().as_deref(), Some("doomed"));
    })
    .join()
    .unwrap();
    // Whatever order the two values went in, the read did not reach a freed one.
    assert_eq!(rx.recv().unwrap(), None);
}

#[cfg(not(miri))]
mod tokio_tasks {
    use super::*;

    #[test]
    fn a_task_polled_inside_a_context_that_was_just_read_does_not_see_it() {
        let mut ctx = Context::new().with_value(&NAME, "owner's".to_string());
        ctx.run(|| {
            // The cache now points at the owner's value.
            assert_eq!(name().as_deref(), Some("owner's"));
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let seen = runtime.block_on(async {
                // `block_on`'s own future is no task: it still sees the context it runs in.
                let in_block_on = name();
                // A task spawned without a context, polled on this very thread while the
                // owner's context is current, with nothing changed in between.
                let in_task = tokio::spawn(async { (name(), NAME.is_set(), LEVEL.get()) })
                    .await
                    .unwrap();
                (in_block_on, in_task)
            });
            assert_eq!(
                seen,
                (Some("owner's".to_string()), (None, false, 1)),
                "(block_on's future, the task)"
            );
            assert_eq!(name().as_deref(), Some("owner's"));
        });
    }

    #[test]
    fn many_tasks_reading_and_writing_on_a_shared_pool_see_only_their_own_values() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut handles = Vec::new();
            for task in 0..200_u32 {
                handles.push(contextvars::spawn(async move {
                    for step in 0..50_u32 {
                        let _guard = OTHER.scoped(task * 1_000 + step);
                        for _ in 0..3 {
                            assert_eq!(OTHER.get(), Some(task * 1_000 + step));
                            if (task + step) % 3 == 0 {
                                tokio::task::yield_now().await;
                            }
                        }
                    }
                    OTHER.get()
                }));
            }
            for handle in handles {
                assert_eq!(handle.await.unwrap(), None);
            }
        });
    }
}
