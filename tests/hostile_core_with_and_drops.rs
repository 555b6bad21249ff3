//! Hostile tests of `with` (the borrow must survive sets and resets made by its closure),
//! of values whose `Drop` spawns or snapshots while their context goes (a task's end, a
//! thread's exit), of guards that escape their scope, and of stacked contexts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use contextvars::{Context, FutureExt, context_var};

#[derive(Debug, PartialEq)]
struct NotClone(Vec<u8>);

#[context_var]
static SMALL: u8;

#[context_var]
static PAIR: (u64, u64);

#[context_var]
static WIDE: [u64; 8];

#[context_var]
static TEXT: String;

#[context_var]
static OPAQUE: NotClone;

#[context_var]
static OTHER: u32;

/// B8: `with` lends the value and lets its closure set and reset variables; the borrowed value
/// stays alive and unchanged while the closure replaces it with `set`, resets it, and sets it
/// again, for values stored in place, shared, `Copy` or not, `Clone` or not.
#[test]
fn with_lends_a_value_that_survives_its_closure_replacing_it() {
    let mut ctx = Context::new();
    ctx.run(|| {
        let _ = SMALL.set(1);
        let _ = PAIR.set((2, 3));
        let _ = WIDE.set([4; 8]);
        let _ = TEXT.set("five".repeat(10));
        let _ = OPAQUE.set(NotClone(vec![6; 100]));

        let small = SMALL.with(|v| {
            let token = SMALL.set(100);
            let _ = SMALL.set(101);
            assert_eq!(SMALL.get(), Some(101));
            drop(token);
            *v.unwrap()
        });
        assert_eq!(small, 1);
        let pair = PAIR.with(|v| {
            let token = PAIR.set((9, 9));
            PAIR.reset(token).unwrap();
            let _ = PAIR.set((10, 10));
            *v.unwrap()
        });
        assert_eq!(pair, (2, 3));
        let wide = WIDE.with(|v| {
            let _ = WIDE.set([0; 8]);
            *v.unwrap()
        });
        assert_eq!(wide, [4; 8]);
        let text = TEXT.with(|v| {
            let _ = TEXT.set(String::from("replaced"));
            // Churn the allocator so that a freed string would likely be overwritten.
            let noise: Vec<String> = (0..64).map(|i| format!("{i:040}")).collect();
            drop(noise);
            v.unwrap().clone()
        });
        assert_eq!(text, "five".repeat(10));
        let opaque = OPAQUE.with(|v| {
            let _ = OPAQUE.set(NotClone(vec![0; 100]));
            let noise: Vec<Vec<u8>> = (0..64).map(|_| vec![0xAA; 100]).collect();
            drop(noise);
            v.unwrap().0.clone()
        });
        assert_eq!(opaque, vec![6; 100]);
        // The sets made inside stuck.
        assert_eq!(SMALL.get(), Some(101));
        assert_eq!(PAIR.get(), Some((10, 10)));
        assert_eq!(WIDE.get(), Some([0; 8]));
        assert_eq!(TEXT.get().as_deref(), Some("replaced"));
        assert!(OPAQUE.with(|v| v == Some(&NotClone(vec![0; 100]))));
    });
}

/// B8, B24: `with`'s closure may drop the `Context` that holds the borrowed value's only
/// other owner and run a context of its own that sets; the borrow stays valid.
#[test]
fn with_closure_that_runs_and_drops_contexts() {
    let mut ctx = Context::new().with_value(&TEXT, "kept".to_string());
    let seen = ctx.run(|| {
        TEXT.with(|v| {
            let mut other = Context::current();
            other.run(|| {
                let _ = TEXT.set("inner".to_string());
            });
            assert_eq!(other.get(&TEXT).map(String::as_str), Some("inner"));
            drop(other);
            let _ = TEXT.set("outer".to_string());
            v.cloned()
        })
    });
    assert_eq!(seen.as_deref(), Some("kept"));
    assert_eq!(ctx.get(&TEXT).map(String::as_str), Some("outer"));
}

// ---------------------------------------------------------------------------------------
// A `Drop` that spawns while its task's context goes
// ---------------------------------------------------------------------------------------

static CHILD_SAW: Mutex<Vec<(Option<u32>, bool)>> = Mutex::new(Vec::new());
static SPAWNER_DROPS: AtomicUsize = AtomicUsize::new(0);

/// Spawns a `contextvars::spawn` child from its `Drop`: the child's snapshot is taken while
/// the context goes.
struct SpawnsOnDrop(tokio::runtime::Handle);

impl Drop for SpawnsOnDrop {
    fn drop(&mut self) {
        SPAWNER_DROPS.fetch_add(1, Ordering::SeqCst);
        let _entered = self.0.enter();
        drop(contextvars::spawn(async {
            tokio::task::yield_now().await;
            let seen = (OTHER.get(), SPAWNER.with(|s| s.is_some()));
            CHILD_SAW.lock().unwrap().push(seen);
        }));
    }
}

#[context_var]
static SPAWNER: SpawnsOnDrop;

/// B24, B25: a value dropped at its task's end may `contextvars::spawn`; the child starts from
/// the dying context as it is then (the values not dropped yet, never the one being
/// dropped), runs to its end, and the value is dropped once.
#[test]
fn a_drop_at_task_end_that_spawns_a_child_hands_it_the_live_values() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let handle = runtime.handle().clone();
    runtime.block_on(async move {
        for _ in 0..20 {
            let handle = handle.clone();
            contextvars::spawn(async move {
                // `OTHER` first: its key is older, so it outlives `SPAWNER`.
                let _ = OTHER.set(5);
                let _ = SPAWNER.set(SpawnsOnDrop(handle));
                tokio::task::yield_now().await;
            })
            .await
            .unwrap();
        }
        for _ in 0..200 {
            if CHILD_SAW.lock().unwrap().len() == 20 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    });
    assert_eq!(SPAWNER_DROPS.load(Ordering::SeqCst), 20);
    assert_eq!(*CHILD_SAW.lock().unwrap(), vec![(Some(5), false); 20]);
}

// ---------------------------------------------------------------------------------------
// A thread's context snapshotted as the thread exits
// ---------------------------------------------------------------------------------------

static EXIT_DROPS: AtomicUsize = AtomicUsize::new(0);

struct SendsSnapshot(mpsc::Sender<Context>);

impl Drop for SendsSnapshot {
    fn drop(&mut self) {
        let _ = self.0.send(Context::current());
    }
}

struct CountsDrop(u32);

impl Drop for CountsDrop {
    fn drop(&mut self) {
        EXIT_DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

#[context_var]
static SENDER: SendsSnapshot;

#[context_var]
static COUNTED: Arc<CountsDrop>;

/// B30, S9: a value dropped as a plain thread exits may snapshot the thread's context and
/// send it away: the snapshot holds nothing (the thread's context is gone by then, as
/// documented), runs on the receiving thread, and each value is dropped exactly once.
#[test]
fn a_snapshot_taken_as_a_thread_exits_is_usable_elsewhere() {
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = COUNTED.set(Arc::new(CountsDrop(8)));
        let _ = OTHER.set(8);
        let _ = SENDER.set(SendsSnapshot(send));
    })
    .join()
    .unwrap();
    let mut snapshots: Vec<Context> = receive.iter().collect();
    assert_eq!(snapshots.len(), 1);
    for snapshot in &mut snapshots {
        assert!(!snapshot.contains(&SENDER));
        if let Some(counted) = snapshot.get(&COUNTED) {
            assert_eq!(counted.0, 8);
        }
        let read = snapshot.run(|| (COUNTED.get().map(|c| c.0), SENDER.with(|s| s.is_some())));
        assert!(!read.1);
        // As documented, a thread's own context is gone when its values drop at exit:
        // they read nothing.
        assert!(snapshot.is_empty());
        assert_eq!(read.0, None);
    }
    drop(snapshots);
    assert_eq!(EXIT_DROPS.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------
// Guards that escape their scope
// ---------------------------------------------------------------------------------------

/// B15, B16: a guard made inside `sync_scope` and returned out of it is dropped in the
/// caller's context, a different one: it panics clearly and changes neither context.
#[test]
fn a_guard_escaping_sync_scope_panics_and_changes_nothing() {
    let mut ctx = Context::new().with_value(&OTHER, 1);
    let outcome = ctx.run(|| {
        let guard = SMALL.sync_scope(3, || OTHER.scoped(2));
        assert_eq!(OTHER.get(), Some(1));
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(guard)));
        (dropped.is_err(), OTHER.get(), SMALL.get())
    });
    assert_eq!(outcome, (true, Some(1), None));
    assert_eq!(ctx.len(), 1);
}

/// B15, B16: a guard made inside a `scope` future and handed out of it as its output is
/// dropped in the awaiting task's context: it panics clearly and changes nothing there.
#[test]
fn a_guard_escaping_a_scope_future_panics_and_changes_nothing() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let outcome = runtime
        .block_on(async {
            contextvars::spawn(async {
                let _token = OTHER.set(1);
                let guard = SMALL.scope(3, async { OTHER.scoped(2) }).await;
                let dropped =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(guard)));
                (dropped.is_err(), OTHER.get(), SMALL.get())
            })
            .await
        })
        .unwrap();
    assert_eq!(outcome, (true, Some(1), None));
}

// ---------------------------------------------------------------------------------------
// Stacked contexts
// ---------------------------------------------------------------------------------------

/// B24: a future wrapped twice runs in the inner context; its sets go there and reach
/// neither the outer context nor the caller; polled inside another `Context::run`, it leaves
/// that context as it was.
#[test]
fn a_future_wrapped_twice_runs_in_the_inner_context() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let inner = Context::new().with_value(&OTHER, 1);
    let outer = Context::new().with_value(&OTHER, 2).with_value(&SMALL, 9);
    let future = async {
        let before = (OTHER.get(), SMALL.get());
        let _ = OTHER.set(3);
        tokio::task::yield_now().await;
        (before, OTHER.get())
    }
    .with_context(inner)
    .with_context(outer);
    let mut host = Context::new().with_value(&OTHER, 4);
    let seen = host.run(|| runtime.block_on(future));
    assert_eq!(seen, ((Some(1), None), Some(3)));
    assert_eq!(host.get(&OTHER), Some(&4));
    assert_eq!(host.len(), 1);
}

// ---------------------------------------------------------------------------------------
// Tokens and guards kept inside a context's own values
// ---------------------------------------------------------------------------------------

static WITNESS_DROPS: Mutex<Vec<(u32, Option<u32>)>> = Mutex::new(Vec::new());

/// Records its id and the `OTHER` it reads when dropped.
struct Witness(u32);

impl Drop for Witness {
    fn drop(&mut self) {
        WITNESS_DROPS.lock().unwrap().push((self.0, OTHER.get()));
    }
}

#[context_var]
static WITNESS: Arc<Witness>;

/// Holds a token of `WITNESS` and resets it when dropped.
struct HoldsToken(Option<contextvars::Token<WITNESS>>);

impl Drop for HoldsToken {
    fn drop(&mut self) {
        if let Some(token) = self.0.take() {
            WITNESS
                .reset(token)
                .expect("the token's own context is the one being dropped");
        }
    }
}

/// Holds a guard of `WITNESS`, restored when dropped.
struct HoldsGuard(Option<contextvars::ScopeGuard>);

impl Drop for HoldsGuard {
    fn drop(&mut self) {
        drop(self.0.take());
    }
}

#[context_var]
static TOKEN_HOLDER: HoldsToken;

#[context_var]
static GUARD_HOLDER: HoldsGuard;

/// B11, B15, B24: a context's value that holds a token (or a guard) of that same context and
/// resets it when the context is dropped puts the old value back into the dying context;
/// every value, the one put back included, is dropped exactly once, inside the context.
#[test]
fn a_value_resetting_its_own_contexts_token_or_guard_as_the_context_dies() {
    WITNESS_DROPS.lock().unwrap().clear();
    let mut with_token = Context::new().with_value(&OTHER, 7);
    with_token.run(|| {
        let _ = WITNESS.set(Arc::new(Witness(1)));
        let token = WITNESS.set(Arc::new(Witness(2)));
        let _ = TOKEN_HOLDER.set(HoldsToken(Some(token)));
    });
    drop(with_token);
    let mut with_guard = Context::new().with_value(&OTHER, 8);
    with_guard.run(|| {
        let _ = WITNESS.set(Arc::new(Witness(3)));
        let guard = WITNESS.scoped(Arc::new(Witness(4)));
        let _ = GUARD_HOLDER.set(HoldsGuard(Some(guard)));
    });
    drop(with_guard);
    let mut drops = std::mem::take(&mut *WITNESS_DROPS.lock().unwrap());
    drops.sort_unstable();
    assert_eq!(
        drops,
        [(1, Some(7)), (2, Some(7)), (3, Some(8)), (4, Some(8))]
    );
}

static SHUTDOWN_SAW: Mutex<Vec<Option<u32>>> = Mutex::new(Vec::new());

/// Reads `OTHER` and spawns a `contextvars::spawn` task from its `Drop`.
struct SpawnsAtShutdown;

impl Drop for SpawnsAtShutdown {
    fn drop(&mut self) {
        SHUTDOWN_SAW.lock().unwrap().push(OTHER.get());
        if tokio::runtime::Handle::try_current().is_ok() {
            drop(contextvars::spawn(async { OTHER.get() }));
        }
    }
}

#[context_var]
static AT_SHUTDOWN: SpawnsAtShutdown;

/// B24, S9: tasks still pending when their runtime is dropped are dropped with it; their
/// values, whose `Drop` reads and spawns, are dropped once each, inside each task's own
/// context, and nothing panics or aborts.
#[test]
fn values_of_tasks_dropped_at_runtime_shutdown_go_inside_their_contexts() {
    SHUTDOWN_SAW.lock().unwrap().clear();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for id in 0..20u32 {
            drop(contextvars::spawn(async move {
                let _ = OTHER.set(id);
                let _ = AT_SHUTDOWN.set(SpawnsAtShutdown);
                std::future::pending::<()>().await;
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    });
    drop(runtime);
    let mut saw = std::mem::take(&mut *SHUTDOWN_SAW.lock().unwrap());
    saw.sort_unstable();
    assert_eq!(saw, (0..20).map(Some).collect::<Vec<_>>());
}
