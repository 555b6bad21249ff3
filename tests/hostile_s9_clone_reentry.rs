//! Hostile tests of a value's `Clone` (run by `get` for a non-`Copy` type) that does
//! async-adjacent things while the library reads it: spawns a task with
//! `contextvars::spawn` (and, under the hooks, plain `tokio::spawn`), sets in a snapshot of
//! the context being read (which holds the value: must panic, leaving everything intact), sets
//! in a fresh context (must work), drops a context whose values' `Drop` set variables, and
//! reads another variable whose own `Clone` sets in a fresh context. Plain, inside tasks, and
//! under the runtime hooks.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

use contextvars::{Context, context_var};

#[context_var]
static TENANT: u32;

#[context_var]
static OTHER: u32;

type Log = Mutex<Vec<String>>;

/// What a `Clone` does besides cloning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Does {
    /// `contextvars::spawn` on the current runtime a task that reads `TENANT`, whether
    /// `HOSTILE` is bound (with `with`, which does not clone), and sets `TENANT` itself.
    Spawn,
    /// Under the hooks: the same through plain `tokio::spawn`, which reads only.
    #[cfg_attr(not(all(tokio_unstable, feature = "hooks")), allow(dead_code))]
    PlainSpawn,
    /// `Context::current().run(|| OTHER.set(..))`, the panic caught inside the `Clone`.
    SetInSnapshot,
    /// `Context::new().run(|| OTHER.set(..))`, reading it back there.
    SetInFresh,
    /// Drops the context parked in its log's `PARKED` slot.
    DropParked,
    /// Reads `INNER`, whose `Clone` sets in a fresh context.
    Nested,
}

/// A value whose `Clone` does `does` and writes what it saw in `log`.
#[derive(Debug)]
struct Hostile {
    does: Does,
    log: &'static Log,
}

/// What a task spawned by a `Clone` saw: `TENANT`, whether `HOSTILE` was bound, and (for a
/// `contextvars::spawn` task) whether its own `try_set` worked.
type Spawned = contextvars::JoinHandle<(Option<u32>, bool, bool)>;
type PlainSpawned = tokio::task::JoinHandle<(Option<u32>, bool)>;

static SPAWNED: Mutex<Vec<Spawned>> = Mutex::new(Vec::new());
static PLAIN_SPAWNED: Mutex<Vec<PlainSpawned>> = Mutex::new(Vec::new());
static PARKED: Mutex<Option<Context>> = Mutex::new(None);

/// The tests that use `SPAWNED`, `PLAIN_SPAWNED` or `PARKED` run one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn plain_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

impl Clone for Hostile {
    fn clone(&self) -> Self {
        let log = |line: String| self.log.lock().unwrap().push(line);
        match self.does {
            Does::Spawn => {
                let handle = tokio::runtime::Handle::current();
                let _entered = handle.enter();
                let task = contextvars::spawn(async {
                    tokio::task::yield_now().await;
                    let seen = TENANT.get();
                    let bound = HOSTILE.with(|value| value.is_some());
                    let set = TENANT.try_set(99).is_ok();
                    (seen, bound, set)
                });
                SPAWNED.lock().unwrap().push(task);
                log("spawned".into());
            }
            Does::PlainSpawn => {
                let task = tokio::spawn(async {
                    tokio::task::yield_now().await;
                    (TENANT.get(), HOSTILE.with(|value| value.is_some()))
                });
                PLAIN_SPAWNED.lock().unwrap().push(task);
                log("spawned".into());
            }
            Does::SetInSnapshot => {
                let outcome = catch_unwind(AssertUnwindSafe(|| {
                    Context::current().run(|| drop(OTHER.set(1)));
                }));
                log(format!("snapshot set panicked: {}", outcome.is_err()));
            }
            Does::SetInFresh => {
                let read = Context::new().run(|| {
                    let _token = OTHER.set(2);
                    OTHER.get()
                });
                log(format!("fresh set read {read:?}"));
            }
            Does::DropParked => {
                drop(PARKED.lock().unwrap().take());
                log("dropped the parked context".into());
            }
            Does::Nested => {
                let inner = INNER.get().map(|inner| inner.does);
                log(format!("inner {inner:?}"));
            }
        }
        Hostile {
            does: self.does,
            log: self.log,
        }
    }
}

#[context_var]
static HOSTILE: Hostile;

#[context_var]
static INNER: Hostile;

/// Its `Drop` sets `OTHER` and logs what it reads back and `TENANT`.
struct SetsInDrop(&'static Log);

impl Drop for SetsInDrop {
    fn drop(&mut self) {
        let set = OTHER.try_set(5).is_ok();
        self.0.lock().unwrap().push(format!(
            "drop: set {set}, OTHER {:?}, TENANT {:?}",
            OTHER.get(),
            TENANT.get()
        ));
    }
}

#[context_var]
static SETTER: SetsInDrop;

/// Reads `HOSTILE` (cloning it) in the current context, which binds `TENANT` to 7, and checks
/// that the read worked and left the context as it was: `TENANT` 7, `OTHER` unbound, the
/// value still bound and the context still writable.
fn read_in_place(does: Does, log: &'static Log) {
    let _tenant = TENANT.scoped(7);
    let _value = HOSTILE.scoped(Hostile { does, log });
    let read = HOSTILE.get().map(|value| value.does);
    assert_eq!(read, Some(does), "{does:?}: the read value");
    assert_eq!(TENANT.get(), Some(7), "{does:?}");
    assert_eq!(
        OTHER.get(),
        None,
        "{does:?}: a set leaked into the read context"
    );
    let _other = OTHER.scoped(3);
    assert_eq!(
        OTHER.get(),
        Some(3),
        "{does:?}: the context is still writable"
    );
}

/// Values whose `Clone` do these things, read where a test reads them.
fn lines(log: &'static Log) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap())
}

/// A `Clone` that sets in a snapshot of the context being read (which holds the value) gets
/// a panic, as `get`'s docs say; caught there, the read still returns the value and leaves
/// the context whole, its variables as they were and still writable.
#[test]
fn a_clone_that_sets_in_a_snapshot_panics_and_leaves_the_context_whole() {
    static LOG: Log = Mutex::new(Vec::new());
    Context::new().run(|| read_in_place(Does::SetInSnapshot, &LOG));
    assert_eq!(lines(&LOG), ["snapshot set panicked: true"]);
}

/// A `Clone` that sets in a fresh context of its own works there (reads back its value) and
/// changes nothing of the context being read.
#[test]
fn a_clone_that_sets_in_a_fresh_context_works() {
    static LOG: Log = Mutex::new(Vec::new());
    Context::new().run(|| read_in_place(Does::SetInFresh, &LOG));
    assert_eq!(lines(&LOG), ["fresh set read Some(2)"]);
}

/// A `Clone` that reads another variable whose own `Clone` sets in a fresh context: both
/// reads work and the sets stay in the fresh context.
#[test]
fn a_clone_that_reads_a_variable_whose_clone_sets_in_a_fresh_context_works() {
    static LOG: Log = Mutex::new(Vec::new());
    Context::new().run(|| {
        let _inner = INNER.scoped(Hostile {
            does: Does::SetInFresh,
            log: &LOG,
        });
        read_in_place(Does::Nested, &LOG);
    });
    assert_eq!(
        lines(&LOG),
        ["fresh set read Some(2)", "inner Some(SetInFresh)"]
    );
}

/// A `Clone` that drops another context, the last holder of a value whose `Drop` sets a
/// variable, inside a task: the value is dropped inside its own context (reads its
/// `TENANT`, its set works there), and nothing reaches the context being read.
#[test]
fn a_clone_in_a_task_that_drops_a_context_whose_value_sets_in_drop() {
    static LOG: Log = Mutex::new(Vec::new());
    let _serial = serial();
    *PARKED.lock().unwrap() = Some(
        Context::new()
            .with_value(&TENANT, 41)
            .with_value(&SETTER, SetsInDrop(&LOG)),
    );
    plain_runtime().block_on(async {
        contextvars::spawn(async { read_in_place(Does::DropParked, &LOG) })
            .await
            .unwrap();
    });
    assert_eq!(
        lines(&LOG),
        [
            "drop: set true, OTHER Some(5), TENANT Some(41)",
            "dropped the parked context"
        ]
    );
}

/// A `Clone` that spawns with `contextvars::spawn` (on the runtime it runs in) from a task:
/// the child gets a snapshot of the context being read (its `TENANT`, the value bound) and
/// sets in its own context, which the reader never sees.
#[test]
fn a_clone_that_spawns_gives_the_child_the_context_being_read() {
    static LOG: Log = Mutex::new(Vec::new());
    let _serial = serial();
    plain_runtime().block_on(async {
        contextvars::spawn(async { read_in_place(Does::Spawn, &LOG) })
            .await
            .unwrap();
        let tasks = std::mem::take(&mut *SPAWNED.lock().unwrap());
        assert_eq!(tasks.len(), 1);
        for task in tasks {
            assert_eq!(task.await.unwrap(), (Some(7), true, true));
        }
    });
    assert_eq!(lines(&LOG), ["spawned"]);
}

/// The same reads, in a plain `tokio::spawn` task of a runtime with the hooks (its context
/// inherited, read-only), and inside a `contextvars::spawn` task there.
#[cfg(all(tokio_unstable, feature = "hooks"))]
mod hooks {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        contextvars::hooks::install(builder.worker_threads(2).enable_all())
            .build()
            .unwrap()
    }

    /// In a plain task that inherited the value (and `TENANT` 7): a `Clone` that sets in a
    /// snapshot panics (caught inside it), one that sets in a fresh context works, a nested
    /// one works, and the read returns the value with the inherited context unchanged.
    #[test]
    fn in_an_inherited_context_a_clone_sets_only_in_a_fresh_context() {
        static LOG: Log = Mutex::new(Vec::new());
        let _serial = serial();
        runtime().block_on(async {
            contextvars::spawn(async {
                for does in [Does::SetInSnapshot, Does::SetInFresh, Does::Nested] {
                    let _tenant = TENANT.scoped(7);
                    let _inner = INNER.scoped(Hostile {
                        does: Does::SetInFresh,
                        log: &LOG,
                    });
                    let _value = HOSTILE.scoped(Hostile { does, log: &LOG });
                    let read = tokio::spawn(async move {
                        let read = HOSTILE.get().map(|value| value.does);
                        (read, TENANT.get(), OTHER.get())
                    })
                    .await
                    .unwrap();
                    assert_eq!(read, (Some(does), Some(7), None), "{does:?}");
                }
            })
            .await
            .unwrap();
        });
        assert_eq!(
            lines(&LOG),
            [
                "snapshot set panicked: true",
                "fresh set read Some(2)",
                "fresh set read Some(2)",
                "inner Some(SetInFresh)"
            ]
        );
    }

    /// A `Clone` run in a plain task that spawns with plain `tokio::spawn` and with
    /// `contextvars::spawn`: both children inherit the context being read (the plain task's
    /// inherited one), `TENANT` and the value included.
    #[test]
    fn a_clone_in_an_inherited_context_that_spawns_passes_that_context_on() {
        static LOG: Log = Mutex::new(Vec::new());
        let _serial = serial();
        runtime().block_on(async {
            contextvars::spawn(async {
                let _tenant = TENANT.scoped(7);
                let _value = HOSTILE.scoped(Hostile {
                    does: Does::PlainSpawn,
                    log: &LOG,
                });
                let _inner = INNER.scoped(Hostile {
                    does: Does::Spawn,
                    log: &LOG,
                });
                tokio::spawn(async {
                    assert!(HOSTILE.get().is_some());
                    assert!(INNER.get().is_some());
                })
                .await
                .unwrap();
            })
            .await
            .unwrap();
            let plain = std::mem::take(&mut *PLAIN_SPAWNED.lock().unwrap());
            assert_eq!(plain.len(), 1);
            for task in plain {
                assert_eq!(task.await.unwrap(), (Some(7), true));
            }
            let helper = std::mem::take(&mut *SPAWNED.lock().unwrap());
            assert_eq!(helper.len(), 1);
            for task in helper {
                // `contextvars::spawn` gives the child a context it may write.
                assert_eq!(task.await.unwrap(), (Some(7), true, true));
            }
        });
        assert_eq!(lines(&LOG), ["spawned", "spawned"]);
    }

    /// A `Clone` in a plain task under the hooks that drops the last holder of a context
    /// whose value's `Drop` sets: the value drops inside its own context, its set works, and
    /// the plain task's inherited context is unchanged.
    #[test]
    fn a_clone_in_an_inherited_context_that_drops_a_context_whose_value_sets() {
        static LOG: Log = Mutex::new(Vec::new());
        let _serial = serial();
        runtime().block_on(async {
            contextvars::spawn(async {
                let _tenant = TENANT.scoped(7);
                let _value = HOSTILE.scoped(Hostile {
                    does: Does::DropParked,
                    log: &LOG,
                });
                let read = tokio::spawn(async {
                    *PARKED.lock().unwrap() = Some(
                        Context::new()
                            .with_value(&TENANT, 41)
                            .with_value(&SETTER, SetsInDrop(&LOG)),
                    );
                    let read = HOSTILE.get().is_some();
                    (read, TENANT.get(), OTHER.get())
                })
                .await
                .unwrap();
                assert_eq!(read, (true, Some(7), None));
            })
            .await
            .unwrap();
        });
        assert_eq!(
            lines(&LOG),
            [
                "drop: set true, OTHER Some(5), TENANT Some(41)",
                "dropped the parked context"
            ]
        );
    }
}

#[context_var]
static STASHER: Stasher;

static STASHED: Mutex<Vec<Context>> = Mutex::new(Vec::new());

/// Its `Clone` takes a snapshot of the context being read and keeps it.
#[derive(Debug)]
struct Stasher;

impl Clone for Stasher {
    fn clone(&self) -> Self {
        STASHED.lock().unwrap().push(Context::current());
        Stasher
    }
}

/// A snapshot taken by a `Clone` is a snapshot like any other: what the reader sets or
/// resets after the read (in place, in a context that nobody else seemed to hold) never
/// reaches it.
#[test]
fn a_snapshot_taken_by_a_clone_does_not_see_later_writes() {
    Context::new().run(|| {
        let _tenant = TENANT.scoped(7);
        let _stasher = STASHER.scoped(Stasher);
        let token = OTHER.set(1);
        assert!(STASHER.get().is_some());
        let _ = OTHER.set(2);
        let _ = TENANT.set(8);
        OTHER.reset(token).unwrap();
        assert_eq!(OTHER.get(), None);
    });
    let mut stashed = STASHED.lock().unwrap().pop().unwrap();
    assert_eq!(
        stashed.run(|| (TENANT.get(), OTHER.get())),
        (Some(7), Some(1))
    );
}
