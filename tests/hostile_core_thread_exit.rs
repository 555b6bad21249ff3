//! Hostile tests of a plain thread's own context torn down at thread exit (thread-local
//! destruction), where a panic escaping a destructor aborts the whole process.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use contextvars::{Context, context_var};

/// Its `Drop` counts on its counter, then panics.
struct Panics(&'static AtomicUsize);

impl Drop for Panics {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("a value's Drop panics at thread exit");
    }
}

#[context_var]
static FIRST: Arc<Panics>;

#[context_var]
static SECOND: Arc<Panics>;

/// B39, S9 ("a panic in a value's `Drop` never aborts the process", "the context's other
/// values are still dropped one by one"): a plain thread that exits with two values whose
/// `Drop` panics in its own context. Run it alone: where it fails, the process aborts.
#[test]
fn two_panicking_drops_at_plain_thread_exit_do_not_abort_the_process() {
    static DROPS: AtomicUsize = AtomicUsize::new(0);
    let joined = std::thread::spawn(|| {
        let _ = FIRST.set(Arc::new(Panics(&DROPS)));
        let _ = SECOND.set(Arc::new(Panics(&DROPS)));
    })
    .join();
    // However the thread's end is reported, the process is alive and both values went.
    let _ = joined;
    assert_eq!(DROPS.load(Ordering::SeqCst), 2);
}

/// Its `Drop` counts on its counter and does nothing else.
struct Quiet(&'static AtomicUsize);

impl Drop for Quiet {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[context_var]
static QUIET: Arc<Quiet>;

#[context_var]
static LONE: Arc<Panics>;

/// The drops of the passing tests' panicking values.
static PANICKED: AtomicUsize = AtomicUsize::new(0);

/// B39, S9: a plain thread that exits with one value whose `Drop` panics and another that
/// does not, in its own context: the process lives on and the other value is dropped too.
#[test]
fn one_panicking_drop_at_plain_thread_exit_leaves_the_process_and_the_other_values() {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let _ = std::thread::spawn(|| {
        let _ = QUIET.set(Arc::new(Quiet(&COUNT)));
        let _ = LONE.set(Arc::new(Panics(&PANICKED)));
    })
    .join();
    assert_eq!(COUNT.load(Ordering::SeqCst), 1);
}

/// B39, S9: a `Context` holding two values whose `Drop` panics, dropped while its thread
/// unwinds from another panic: the process lives on (each value is dropped on its own, and
/// no panic escapes a destructor during unwinding), and the join reports the first panic.
#[test]
fn a_context_with_two_panicking_values_dropped_during_unwinding_does_not_abort() {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let joined = std::thread::spawn(|| {
        let mut ctx = Context::new();
        ctx.run(|| {
            let _ = LONE.set(Arc::new(Panics(&PANICKED)));
            let _ = QUIET.set(Arc::new(Quiet(&COUNT)));
            let _ = SECOND.set(Arc::new(Panics(&PANICKED)));
        });
        let _held = ctx;
        panic!("the thread's own panic");
    })
    .join();
    let payload = joined.unwrap_err();
    assert_eq!(
        payload.downcast_ref::<&str>().copied(),
        Some("the thread's own panic")
    );
    assert_eq!(COUNT.load(Ordering::SeqCst), 1);
}

thread_local! {
    /// A user's thread-local that keeps a `Context` until the thread exits.
    static KEEP: std::cell::RefCell<Option<Context>> = const { std::cell::RefCell::new(None) };
}

static KEPT_SAW: std::sync::Mutex<Vec<Option<u32>>> = std::sync::Mutex::new(Vec::new());

/// Its `Drop` reads `TENANT`.
struct ReadsTenant;

impl Drop for ReadsTenant {
    fn drop(&mut self) {
        KEPT_SAW.lock().unwrap().push(TENANT.get());
    }
}

#[context_var]
static TENANT: u32;

#[context_var]
static READS: Arc<ReadsTenant>;

/// B24, S9: a `Context` kept in a user's thread-local, destroyed at thread exit after the
/// library's own thread state (registered later, so destroyed first), still drops its
/// values once, inside itself, without a panic.
#[test]
fn a_context_in_a_user_thread_local_dropped_after_the_librarys_state_at_exit() {
    let joined = std::thread::spawn(|| {
        // The user's thread-local first, so that its destructor runs last.
        KEEP.with(|keep| assert!(keep.borrow().is_none()));
        let _ = TENANT.set(1);
        let ctx = Context::new()
            .with_value(&TENANT, 2)
            .with_value(&READS, Arc::new(ReadsTenant));
        KEEP.with(|keep| *keep.borrow_mut() = Some(ctx));
    })
    .join();
    assert!(joined.is_ok());
    let saw = KEPT_SAW.lock().unwrap().clone();
    assert_eq!(saw, [Some(2)], "dropped once, inside its context");
}
