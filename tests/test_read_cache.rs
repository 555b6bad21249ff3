//! `get` reads through a per-thread cache that remembers where each variable's value is in
//! the current context until that context changes. These tests make every kind of change
//! between two reads and check that the second read never sees a stale, freed or foreign
//! value. They also run under Miri (`scripts/miri`), which would report a read of freed
//! memory.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Mutex;
use std::sync::mpsc;
use std::task::{Context as TaskContext, Poll, Waker};

use contextvars::{Context, ContextVar, FutureExt, Key, NoDefault, context_var};

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

/// Polls `future` once, with a waker that does nothing.
fn poll_once<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut TaskContext::from_waker(Waker::noop()))
}

/// Pending once: the next poll enters the context again.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|_| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            Poll::Pending
        }
    })
    .await;
}

/// A future that, at each poll, checks that `NAME` reads what it set at its last poll, then
/// sets it anew every other poll; never ready.
async fn reads_what_it_set(who: &'static str) {
    let mut expected = None;
    for poll in 0.. {
        assert_eq!(name(), expected, "{who}, poll {poll}");
        if poll % 2 == 0 {
            let value = format!("{who} {poll}");
            drop(NAME.set(value.clone()));
            expected = Some(value);
        }
        assert_eq!(name(), expected, "{who}, poll {poll}");
        yield_once().await;
    }
}

#[test]
fn contexts_polled_in_turn_on_one_thread_each_read_their_own_values() {
    let polls = if cfg!(miri) { 6 } else { 40 };
    let mut a = pin!(reads_what_it_set("a").with_context(Context::new()));
    let mut b = pin!(reads_what_it_set("b").with_context(Context::new()));
    let mut c = pin!(reads_what_it_set("c").with_context(Context::new().with_value(&LEVEL, 3)));
    let mut own = "the thread's".to_string();
    let _own = NAME.set(own.clone());
    for poll in 0..polls {
        // `a` twice in a row, then the others, with the thread's own context read (and, every
        // third round, written) in between.
        assert!(poll_once(a.as_mut()).is_pending());
        assert!(poll_once(a.as_mut()).is_pending());
        assert!(poll_once(b.as_mut()).is_pending());
        assert_eq!(name(), Some(own.clone()));
        if poll % 3 == 0 {
            own = format!("the thread's, {poll}");
            drop(NAME.set(own.clone()));
        }
        assert!(poll_once(c.as_mut()).is_pending());
        assert_eq!(name(), Some(own.clone()));
        assert_eq!(LEVEL.get(), 1);
    }
}

#[test]
fn a_context_run_inside_a_poll_leaves_the_polls_values_readable() {
    let polls = if cfg!(miri) { 4 } else { 20 };
    let future = async move {
        for poll in 0..polls {
            let value = format!("outer {poll}");
            drop(NAME.set(value.clone()));
            assert_eq!(name().as_ref(), Some(&value));
            // Nested, reading the same variable, and one that writes it.
            let mut inner = Context::new().with_value(&NAME, "inner".to_string());
            assert_eq!(inner.run(name).as_deref(), Some("inner"));
            assert_eq!(name().as_ref(), Some(&value));
            Context::current().run(|| drop(NAME.set("a copy's".to_string())));
            assert_eq!(name().as_ref(), Some(&value));
            assert_eq!(inner.run(name).as_deref(), Some("inner"));
            inner.run(|| drop(NAME.set("inner, changed".to_string())));
            assert_eq!(inner.run(name).as_deref(), Some("inner, changed"));
            assert_eq!(name().as_ref(), Some(&value));
            // A future of its own, polled inside this one's poll.
            let mut nested = pin!(reads_what_it_set("nested").with_context(Context::new()));
            assert!(poll_once(nested.as_mut()).is_pending());
            assert_eq!(name().as_ref(), Some(&value));
            assert!(poll_once(nested.as_mut()).is_pending());
            assert_eq!(name().as_ref(), Some(&value));
            yield_once().await;
            assert_eq!(name().as_ref(), Some(&value));
        }
    }
    .with_context(Context::new());
    let mut future = pin!(future);
    while poll_once(future.as_mut()).is_pending() {
        assert_eq!(name(), None);
    }
}

/// When dropped, reads `NAME` and sets `OTHER` to its number plus the length of what it read.
struct SetsOnDrop(u32);

impl Drop for SetsOnDrop {
    fn drop(&mut self) {
        let read = u32::try_from(name().map_or(0, |name| name.len())).unwrap();
        drop(OTHER.set(self.0 + read));
    }
}

#[context_var]
static DROPS_AND_SETS: SetsOnDrop;

#[test]
fn values_whose_drop_reads_and_sets_are_seen_at_the_next_poll() {
    let polls = if cfg!(miri) { 4 } else { 20 };
    let (tx, rx) = mpsc::channel();
    let future = async move {
        // Dropped with the future, inside its context.
        let _report = ReportOnDrop(tx);
        drop(NAME.set("four".to_string()));
        for poll in 0.. {
            // Replacing the value drops the last one here, inside the context: its `Drop`
            // reads `NAME` and sets `OTHER`.
            drop(DROPS_AND_SETS.set(SetsOnDrop(poll * 10)));
            let expected = poll.checked_sub(1).map(|last| last * 10 + 4);
            assert_eq!(OTHER.get(), expected, "poll {poll}");
            yield_once().await;
            assert_eq!(OTHER.get(), expected, "poll {poll}");
            assert_eq!(name().as_deref(), Some("four"));
        }
    };
    let mut future = Box::pin(future.with_context(Context::new()));
    let mut own = Context::new().with_value(&NAME, "own".to_string());
    for _ in 0..polls {
        assert!(own.run(|| poll_once(future.as_mut())).is_pending());
        assert_eq!(own.run(name).as_deref(), Some("own"));
        assert_eq!(OTHER.get(), None);
    }
    // Dropped while pending: the inner future goes inside its context, then the context's
    // values, whose `Drop` set `OTHER` there.
    own.run(|| drop(future));
    assert_eq!(rx.recv().unwrap().as_deref(), Some("four"));
    assert_eq!(
        own.run(|| (name(), OTHER.get())),
        (Some("own".to_string()), None)
    );
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
        let runtime = four_workers();
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

    /// A multi-thread runtime of 4 workers, for futures that move between threads.
    fn four_workers() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .build()
            .unwrap()
    }

    /// A small random number generator (xorshift), so that each task yields at its own steps.
    struct Steps(u64);

    impl Steps {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn futures_that_move_between_workers_read_what_they_set_at_their_last_poll() {
        let runtime = four_workers();
        runtime.block_on(async {
            let mut handles = Vec::new();
            for task in 0..64_u32 {
                handles.push(contextvars::spawn(async move {
                    let mut steps = Steps(0x9e37_79b9_7f4a_7c15 ^ u64::from(task + 1));
                    let mut workers = std::collections::HashSet::new();
                    let mut expected = None;
                    for step in 0..300_u32 {
                        workers.insert(std::thread::current().id());
                        // What the last poll read or wrote, wherever this one runs.
                        assert_eq!(OTHER.get(), expected, "task {task}, step {step}");
                        match steps.next() % 4 {
                            // Written at one poll, read at the next.
                            0 => {
                                expected = Some(task * 1_000 + step);
                                drop(OTHER.set(task * 1_000 + step));
                            }
                            // A context of its own, in between.
                            1 => {
                                let mut inner = Context::new().with_value(&OTHER, u32::MAX);
                                assert_eq!(inner.run(|| OTHER.get()), Some(u32::MAX));
                            }
                            _ => {}
                        }
                        assert_eq!(OTHER.get(), expected, "task {task}, step {step}");
                        if steps.next() % 3 != 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                    workers.len()
                }));
            }
            let mut moved = 0;
            for handle in handles {
                moved += usize::from(handle.await.unwrap() > 1);
            }
            // The premise: futures did move between workers.
            assert!(moved > 0, "no future ran on more than one worker");
        });
    }
}

/// The same under the runtime hooks, which enter a task's context only when it is first used
/// during a poll.
#[cfg(all(tokio_unstable, feature = "hooks", not(miri)))]
mod hooked_tasks {
    use super::*;

    #[test]
    fn tasks_that_inherited_different_contexts_read_their_own_at_every_poll() {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        let runtime = contextvars::hooks::install(builder.worker_threads(4))
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut handles = Vec::new();
            for task in 0..48_u32 {
                let mut parent = Context::new().with_value(&OTHER, task);
                // Plain `tokio::spawn`: the task inherits `parent`'s values, for reading.
                handles.push(parent.run(|| {
                    tokio::spawn(async move {
                        for step in 0..100_u32 {
                            assert_eq!(OTHER.get(), Some(task), "step {step}");
                            tokio::task::yield_now().await;
                            // A context of its own, written at one poll and read at the next.
                            if step % 10 == 0 {
                                let own = async move {
                                    assert_eq!(OTHER.get(), Some(task));
                                    drop(OTHER.set(task + 1_000));
                                    tokio::task::yield_now().await;
                                    let first = OTHER.get();
                                    tokio::task::yield_now().await;
                                    (first, OTHER.get())
                                };
                                let own = own.in_current_context();
                                let read = Some(task + 1_000);
                                assert_eq!(own.await, (read, read));
                                assert_eq!(OTHER.get(), Some(task));
                            }
                        }
                    })
                }));
            }
            for handle in handles {
                handle.await.unwrap();
            }
        });
    }
}
