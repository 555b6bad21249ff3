//! Hostile tests of user code that calls back into the library from the places the library
//! calls it: a value's `Clone` (run by `get`), its `Debug` (run by `Context`'s `Debug`), its
//! `Drop` (run when a context goes), and a default's initializer.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use contextvars::{Context, ScopeGuard, context_var};

#[context_var]
static OTHER: u32;

#[context_var]
static MARK: u32;

// ---------------------------------------------------------------------------------------
// A `Clone` that runs a context of its own and sets there
// ---------------------------------------------------------------------------------------

/// Its `Clone` runs a fresh `Context` and sets `MARK` inside it: the set goes to that fresh
/// context, never to the frame the value is being cloned from.
#[derive(Debug)]
struct RunsFresh;

static FRESH_SEEN: Mutex<Vec<Option<u32>>> = Mutex::new(Vec::new());

impl Clone for RunsFresh {
    fn clone(&self) -> Self {
        let mut fresh = Context::new();
        let seen = fresh.run(|| {
            let _token = MARK.set(7);
            MARK.get()
        });
        FRESH_SEEN.lock().unwrap().push(seen);
        FRESH_SEEN.lock().unwrap().push(fresh.get(&MARK).copied());
        RunsFresh
    }
}

#[context_var]
static FRESH: RunsFresh;

/// B19: `ctx.run` stores the closure's sets in `ctx`; a `Clone` impl (run by `get`) that runs
/// a brand-new context and sets in it writes nothing of the context being read, so the set
/// should work there as anywhere else.
#[test]
fn a_clone_that_sets_inside_a_fresh_context_of_its_own_works() {
    let mut ctx = Context::new().with_value(&FRESH, RunsFresh);
    let got = catch_unwind(AssertUnwindSafe(|| ctx.run(|| FRESH.get().is_some())));
    assert!(matches!(got, Ok(true)), "get panicked: {got:?}");
    assert_eq!(*FRESH_SEEN.lock().unwrap(), [Some(7), Some(7)]);
    assert_eq!(ctx.len(), 1);
}

// ---------------------------------------------------------------------------------------
// A `Clone` that reads: other variables, itself through `with`, and a snapshot
// ---------------------------------------------------------------------------------------

/// What `Reader::clone` saw: `OTHER`, `READER` through `with`, the snapshot's size, and
/// `OTHER` read inside a `run` of that snapshot.
type ReaderSeen = (Option<u32>, Option<u32>, usize, Option<u32>);

static READER_SEEN: Mutex<Vec<ReaderSeen>> = Mutex::new(Vec::new());

#[derive(Debug)]
struct Reader(u32);

impl Clone for Reader {
    fn clone(&self) -> Self {
        let other = OTHER.get();
        let itself = READER.with(|reader| reader.map(|reader| reader.0));
        let mut snapshot = Context::current();
        let len = snapshot.len();
        let inside = snapshot.run(|| OTHER.get());
        READER_SEEN
            .lock()
            .unwrap()
            .push((other, itself, len, inside));
        Reader(self.0)
    }
}

#[context_var]
static READER: Reader;

/// B5, B8, B17, B19: a `Clone` run by `get` may read other variables, borrow the very value
/// being cloned with `with`, take a snapshot and run it; all see the context being read.
#[test]
fn a_clone_that_reads_borrows_itself_and_runs_a_snapshot_sees_the_context_read() {
    let mut ctx = Context::new()
        .with_value(&OTHER, 4)
        .with_value(&READER, Reader(9));
    let got = ctx.run(|| READER.get().map(|reader| reader.0));
    assert_eq!(got, Some(9));
    assert_eq!(
        *READER_SEEN.lock().unwrap(),
        [(Some(4), Some(9), 2, Some(4))]
    );
    // Nothing was added to the context by the reads.
    assert_eq!(ctx.len(), 2);
}

// ---------------------------------------------------------------------------------------
// A `Clone` that drops a scope guard of the value it is being cloned from
// ---------------------------------------------------------------------------------------

static GUARD: Mutex<Option<ScopeGuard>> = Mutex::new(None);
static DROPPED_WHILE_CLONING: AtomicUsize = AtomicUsize::new(0);
static VICTIM_DROPS: AtomicUsize = AtomicUsize::new(0);
static CLONING: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug)]
struct Victim(String);

impl Clone for Victim {
    fn clone(&self) -> Self {
        CLONING.fetch_add(1, Ordering::SeqCst);
        // The guard restores `VICTIM` to unset: were that allowed now, the value `self`
        // points to would be freed while borrowed.
        let guard = GUARD.lock().unwrap().take();
        let _ = catch_unwind(AssertUnwindSafe(|| drop(guard)));
        let copy = Victim(self.0.clone());
        CLONING.fetch_sub(1, Ordering::SeqCst);
        copy
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        if CLONING.load(Ordering::SeqCst) > 0 && self.0 == "original" {
            DROPPED_WHILE_CLONING.fetch_add(1, Ordering::SeqCst);
        }
        VICTIM_DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

#[context_var]
static VICTIM: Victim;

/// B15 and S9: a `Clone` that drops the scope guard of the variable being read cannot free
/// the value `get` is cloning (the value stays alive for the whole `clone`); the context is
/// left whole.
#[test]
fn a_clone_that_drops_the_guard_of_its_own_variable_cannot_free_the_value_being_cloned() {
    let mut ctx = Context::new();
    let copy = ctx.run(|| {
        *GUARD.lock().unwrap() = Some(VICTIM.scoped(Victim("original".to_string())));
        VICTIM.get()
    });
    assert_eq!(copy.as_ref().map(|v| v.0.as_str()), Some("original"));
    assert_eq!(DROPPED_WHILE_CLONING.load(Ordering::SeqCst), 0);
    drop(copy);
    drop(ctx);
    assert_eq!(VICTIM_DROPS.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------------------
// A `Debug` that reads variables and formats another context
// ---------------------------------------------------------------------------------------

struct Chatty;

impl fmt::Debug for Chatty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = Context::new().with_value(&OTHER, 11);
        write!(f, "Chatty(other={:?}, inner={inner:?})", OTHER.get())
    }
}

#[context_var(name = "chatty")]
static CHATTY: Chatty;

/// B20: `Debug for Context` calls each value's `Debug`, which may read variables of the
/// current context and format another `Context`, without deadlock or panic.
#[test]
fn a_debug_that_reads_variables_and_formats_a_context_works_inside_context_debug() {
    let mut outer = Context::new().with_value(&OTHER, 3);
    let text = outer.run(|| {
        let ctx = Context::new().with_value(&CHATTY, Chatty);
        format!("{ctx:?}")
    });
    assert!(text.contains("chatty"), "{text}");
    assert!(text.contains("other=Some(3)"), "{text}");
    assert!(text.contains("11"), "{text}");
}

// ---------------------------------------------------------------------------------------
// A `Drop` that snapshots the context being dropped
// ---------------------------------------------------------------------------------------

static STASH: Mutex<Vec<Context>> = Mutex::new(Vec::new());
static STASHER_DROPS: AtomicUsize = AtomicUsize::new(0);
static KEPT_DROPS: AtomicUsize = AtomicUsize::new(0);

struct Stasher;

impl Drop for Stasher {
    fn drop(&mut self) {
        STASHER_DROPS.fetch_add(1, Ordering::SeqCst);
        STASH.lock().unwrap().push(Context::current());
    }
}

struct Kept(u32);

impl Drop for Kept {
    fn drop(&mut self) {
        KEPT_DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

#[context_var]
static STASHER: Stasher;

#[context_var]
static KEPT: Kept;

/// B24, S9: a value's `Drop` run while its context is dropped may snapshot that context; the
/// snapshot holds the values not dropped yet and never the one being dropped, each value is
/// dropped exactly once, and what the snapshot holds stays readable until the snapshot goes.
#[test]
fn a_drop_that_snapshots_its_dying_context_sees_only_live_values_and_each_drops_once() {
    let mut ctx = Context::new();
    // `KEPT` first, so that its key is older and it is dropped after `STASHER`.
    ctx.run(|| {
        let _ = KEPT.set(Kept(5));
        let _ = STASHER.set(Stasher);
    });
    drop(ctx);
    assert_eq!(STASHER_DROPS.load(Ordering::SeqCst), 1);
    let stash = std::mem::take(&mut *STASH.lock().unwrap());
    assert_eq!(stash.len(), 1);
    for snapshot in &stash {
        assert!(!snapshot.contains(&STASHER));
        assert_eq!(snapshot.len(), 1);
        assert_eq!(snapshot.get(&KEPT).map(|kept| kept.0), Some(5));
    }
    drop(stash);
    assert_eq!(KEPT_DROPS.load(Ordering::SeqCst), 1);
    assert_eq!(STASHER_DROPS.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------
// A default that reads another variable
// ---------------------------------------------------------------------------------------

static DEFAULT_RUNS: AtomicUsize = AtomicUsize::new(0);

fn from_other() -> String {
    DEFAULT_RUNS.fetch_add(1, Ordering::SeqCst);
    format!("from {:?}", OTHER.get())
}

#[context_var]
static DERIVED: String = from_other();

/// B3, B20: a default whose initializer reads another variable is evaluated once, in the
/// context of its first read, and is never in any context's mapping.
#[test]
fn a_default_that_reads_another_variable_is_computed_once_and_stays_out_of_the_mapping() {
    let first = Context::new().with_value(&OTHER, 1).run(|| DERIVED.get());
    let second = Context::new().with_value(&OTHER, 2).run(|| DERIVED.get());
    let second_thread = std::thread::spawn(|| DERIVED.get()).join().unwrap();
    assert_eq!(first, "from Some(1)");
    assert_eq!(second, "from Some(1)");
    assert_eq!(second_thread, "from Some(1)");
    assert_eq!(DEFAULT_RUNS.load(Ordering::SeqCst), 1);
    let mut ctx = Context::new();
    ctx.run(|| DERIVED.with(|value| assert_eq!(value, "from Some(1)")));
    assert!(!ctx.contains(&DERIVED));
    assert!(ctx.is_empty());
}

// ---------------------------------------------------------------------------------------
// Guards and tokens forgotten, and out of order
// ---------------------------------------------------------------------------------------

#[context_var]
static LEVEL: u32 = 0;

/// B11, B15: a guard leaked with `mem::forget` leaves its value set and breaks nothing: later
/// guards restore their own old values, and a token taken before the leak still resets to
/// what it saw.
#[test]
fn a_forgotten_guard_leaves_its_value_and_later_guards_and_tokens_still_restore_their_own() {
    let mut ctx = Context::new();
    ctx.run(|| {
        let before = LEVEL.set(1);
        std::mem::forget(LEVEL.scoped(2));
        assert_eq!(LEVEL.get(), 2);
        {
            let _inner = LEVEL.scoped(3);
            let _other = MARK.scoped(1);
            assert_eq!(LEVEL.get(), 3);
        }
        assert_eq!(LEVEL.get(), 2);
        assert_eq!(MARK.get(), None);
        LEVEL.reset(before).unwrap();
        assert!(!LEVEL.is_set());
    });
    assert!(ctx.is_empty());
}

// ---------------------------------------------------------------------------------------
// A `Clone` that drops an unrelated context whose value sets in its `Drop`
// ---------------------------------------------------------------------------------------

static UNRELATED: Mutex<Option<Context>> = Mutex::new(None);
static SETTER_FINISHED: AtomicUsize = AtomicUsize::new(0);

/// Sets `MARK` in its `Drop`, as B24 allows.
struct SetsInDrop;

impl Drop for SetsInDrop {
    fn drop(&mut self) {
        let _ = MARK.set(1);
        SETTER_FINISHED.fetch_add(1, Ordering::SeqCst);
    }
}

#[context_var]
static SETTER: SetsInDrop;

/// Its `Clone` drops the context parked in `UNRELATED`.
#[derive(Debug)]
struct DropsUnrelated;

impl Clone for DropsUnrelated {
    fn clone(&self) -> Self {
        drop(UNRELATED.lock().unwrap().take());
        DropsUnrelated
    }
}

#[context_var]
static DROPPER: DropsUnrelated;

/// B24 ("every value a context holds is dropped inside that context, so a value's `Drop` may
/// read and set variables; ... nothing panics"): a context dropped from inside a `Clone` run
/// by `get` (an unrelated context, holding a value whose `Drop` sets) should drop that value
/// inside itself without a panic, as anywhere else.
#[test]
fn a_clone_that_drops_an_unrelated_context_whose_value_sets_in_drop() {
    *UNRELATED.lock().unwrap() = Some(Context::new().with_value(&SETTER, SetsInDrop));
    let mut ctx = Context::new().with_value(&DROPPER, DropsUnrelated);
    let got = catch_unwind(AssertUnwindSafe(|| ctx.run(|| DROPPER.get().is_some())));
    assert!(matches!(got, Ok(true)), "get panicked: {got:?}");
    assert_eq!(SETTER_FINISHED.load(Ordering::SeqCst), 1);
}
