//! Reading and writing a variable (SPEC S3, B5–B9): unset vs default vs `get_or`, `try_get`'s
//! error, borrowing with `with`, and values shared rather than cloned.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use contextvars::{Context, FutureExt, LookupError, context_var};

#[context_var]
static NAME: String;

#[context_var]
static RETRIES: u32 = 3;

#[context_var(name = "request.id")]
static REQUEST_ID: u64;

/// A type that is not `Clone`: only `with` can read it.
#[derive(Debug, PartialEq)]
struct NotClone(Vec<u8>);

#[context_var]
static BLOB: NotClone;

#[context_var]
static BLOB_WITH_DEFAULT: NotClone = NotClone(vec![1, 2, 3]);

/// Counts its clones in a counter shared by every clone of one original.
#[derive(Debug)]
struct Counted {
    clones: Arc<AtomicUsize>,
}

impl Counted {
    fn new() -> (Self, Arc<AtomicUsize>) {
        let clones = Arc::new(AtomicUsize::new(0));
        (
            Counted {
                clones: Arc::clone(&clones),
            },
            clones,
        )
    }
}

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, Ordering::SeqCst);
        Counted {
            clones: Arc::clone(&self.clones),
        }
    }
}

#[context_var]
static COUNTED: Counted;

#[context_var]
static SHARED: Arc<Vec<u32>>;

#[context_var]
static LIST: Mutex<Vec<u32>>;

/// Uses context variables from its `Drop`, and counts its drops.
struct UsesContextWhenDropped {
    drops: Arc<AtomicUsize>,
}

impl Drop for UsesContextWhenDropped {
    fn drop(&mut self) {
        let _ = (NAME.get(), RETRIES.get(), Context::current().len());
        NOISY.with(|_| ());
        let token = RETRIES.set(99);
        RETRIES.reset(token).expect("same context");
        drop(REQUEST_ID.scoped(1));
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

#[context_var]
static NOISY: UsesContextWhenDropped;

// B5: unset, no default.
#[test]
fn unset_variable_without_default_reads_none() {
    Context::new().run(|| {
        assert_eq!(NAME.get(), None);
        assert!(!NAME.is_set());
        assert_eq!(NAME.get_or("fallback".to_string()), "fallback");
    });
}

// B5: unset, with default.
#[test]
fn unset_variable_with_default_reads_its_default() {
    Context::new().run(|| {
        assert_eq!(RETRIES.get(), 3);
        assert_eq!(RETRIES.try_get(), Ok(3));
        assert!(!RETRIES.is_set(), "a default is not a binding");
    });
}

// B5 + B7: the precedence is value > fallback > default (CPython `var.get(default)`).
#[test]
fn get_or_fallback_wins_over_default_but_not_over_a_set_value() {
    Context::new().run(|| {
        assert_eq!(
            RETRIES.get_or(10),
            10,
            "fallback beats the variable's default"
        );
        let token = RETRIES.set(5);
        assert_eq!(RETRIES.get(), 5, "set value beats the default");
        assert_eq!(RETRIES.get_or(10), 5, "set value beats the fallback");
        assert_eq!(RETRIES.try_get(), Ok(5));
        RETRIES.reset(token).unwrap();
        assert_eq!(RETRIES.get(), 3);
        assert_eq!(RETRIES.get_or(10), 10);
    });
}

// B5 + B9: a set value is seen until reset.
#[test]
fn set_value_is_read_back_until_reset() {
    Context::new().run(|| {
        let first = NAME.set("ann".to_string());
        assert_eq!(NAME.get().as_deref(), Some("ann"));
        assert!(NAME.is_set());
        let second = NAME.set("bob".to_string());
        assert_eq!(NAME.get().as_deref(), Some("bob"));
        NAME.reset(second).unwrap();
        assert_eq!(NAME.get().as_deref(), Some("ann"));
        NAME.reset(first).unwrap();
        assert_eq!(NAME.get(), None);
    });
}

// B9: without a reset, the value lives as long as the context it was set in.
#[test]
fn value_set_without_reset_lasts_until_its_context_ends() {
    let mut ctx = Context::new();
    ctx.run(|| drop(NAME.set("kept".to_string())));
    assert_eq!(ctx.run(|| NAME.get()).as_deref(), Some("kept"));
    assert_eq!(ctx.get(&NAME).map(String::as_str), Some("kept"));
    // The context that ran the closure is not the caller's.
    Context::new().run(|| assert_eq!(NAME.get(), None));
}

// B2 (CPython test_context_var_repr_1): a variable's `Debug` shows its name and value type.
#[test]
fn variable_debug_shows_its_name_and_type() {
    let debug = format!("{REQUEST_ID:?}");
    assert!(
        debug.contains("\"request.id\"") && debug.contains("u64"),
        "{debug}"
    );
    assert_eq!(REQUEST_ID.name(), "request.id");
    assert_eq!(RETRIES.name(), "RETRIES");
}

// B6: the error names the variable, as declared or as overridden with `name = "…"`.
#[test]
fn try_get_error_names_the_variable() {
    Context::new().run(|| {
        let err: LookupError = REQUEST_ID.try_get().unwrap_err();
        assert_eq!(err.var(), "request.id");
        assert!(err.to_string().contains("`request.id`"), "{err}");

        let err = NAME.try_get().unwrap_err();
        assert_eq!(err.var(), "NAME");
        assert!(err.to_string().contains("`NAME`"), "{err}");

        // It is a real error type.
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(err);
        assert!(boxed.to_string().contains("NAME"));

        let token = REQUEST_ID.set(7);
        assert_eq!(REQUEST_ID.try_get(), Ok(7));
        REQUEST_ID.reset(token).unwrap();
        assert!(REQUEST_ID.try_get().is_err());
    });
}

// B8: `with` lends a value whose type is not `Clone`.
#[test]
fn with_borrows_a_value_that_is_not_clone() {
    Context::new().run(|| {
        assert_eq!(BLOB.with(|blob| blob.map(|b| b.0.len())), None);
        let token = BLOB.set(NotClone(vec![9; 4]));
        assert_eq!(BLOB.with(|blob| blob.map(|b| b.0.len())), Some(4));
        BLOB.reset(token).unwrap();

        // With a default, the closure receives `&T`.
        assert_eq!(BLOB_WITH_DEFAULT.with(|b| b.0.clone()), vec![1, 2, 3]);
        let _guard = BLOB_WITH_DEFAULT.scoped(NotClone(vec![7]));
        assert_eq!(BLOB_WITH_DEFAULT.with(|b| b.0.clone()), vec![7]);
    });
}

// B8: the closure may set variables, the borrowed one included, and its borrow stays valid.
#[test]
fn with_closure_may_set_and_read_variables() {
    Context::new().run(|| {
        let outer = BLOB.set(NotClone(vec![1]));
        let seen = BLOB.with(|blob| {
            let blob = blob.expect("set above");
            // Replace the borrowed value in the context while it is still borrowed.
            let inner = BLOB.set(NotClone(vec![2, 2]));
            let name = NAME.set("inside".to_string());
            let now = BLOB.with(|b| b.map(|b| b.0.clone()));
            BLOB.reset(inner).unwrap();
            NAME.reset(name).unwrap();
            // The borrow still reads the value it was given.
            (blob.0.clone(), now)
        });
        assert_eq!(seen, (vec![1], Some(vec![2, 2])));
        assert_eq!(NAME.get(), None);
        BLOB.reset(outer).unwrap();
    });
}

// B9: `set` moves the value in; snapshots, runs, threads and `with` never clone it. Only
// `get` clones, once per call.
#[test]
fn values_are_never_cloned_by_the_library() {
    Context::new().run(|| {
        let (value, clones) = Counted::new();
        let token = COUNTED.set(value);
        assert_eq!(clones.load(Ordering::SeqCst), 0, "set cloned the value");

        let snapshots: Vec<Context> = (0..16).map(|_| Context::current()).collect();
        let mut copy = snapshots[0].clone();
        copy.run(|| {
            COUNTED.with(|c| assert!(c.is_some()));
            drop(NAME.set("other".to_string()));
        });
        let _ = contextvars::thread::spawn(|| COUNTED.with(|c| c.is_some()))
            .join()
            .unwrap();
        assert!(snapshots.iter().all(|s| s.contains(&COUNTED)));
        assert_eq!(
            clones.load(Ordering::SeqCst),
            0,
            "a snapshot, run or `with` cloned the value"
        );

        let _read = COUNTED.get();
        assert_eq!(
            clones.load(Ordering::SeqCst),
            1,
            "`get` clones exactly once"
        );
        COUNTED.reset(token).unwrap();
        assert_eq!(clones.load(Ordering::SeqCst), 1, "reset cloned the value");
    });
}

// B9: the value in every context is the very allocation that was set.
#[test]
fn values_are_shared_between_contexts_not_duplicated() {
    Context::new().run(|| {
        let original = Arc::new(vec![1, 2, 3]);
        let token = SHARED.set(Arc::clone(&original));
        assert_eq!(Arc::strong_count(&original), 2, "ours and the context's");

        let copies: Vec<Context> = (0..10).map(|_| Context::current()).collect();
        for copy in &copies {
            assert!(Arc::ptr_eq(copy.get(&SHARED).unwrap(), &original));
        }
        assert_eq!(
            Arc::strong_count(&original),
            2,
            "snapshots must share the binding, not clone the value"
        );
        assert!(Arc::ptr_eq(&SHARED.get().unwrap(), &original));
        SHARED.with(|v| assert!(Arc::ptr_eq(v.unwrap(), &original)));
        let from_thread = contextvars::thread::spawn(|| SHARED.get().unwrap())
            .join()
            .unwrap();
        assert!(Arc::ptr_eq(&from_thread, &original));
        drop(from_thread);

        drop(copies);
        SHARED.reset(token).unwrap();
        assert_eq!(
            Arc::strong_count(&original),
            1,
            "reset released the context's reference"
        );
    });
}

// CPython `test_context_getset_5`: a mutable value is shared by the contexts that hold it.
#[test]
fn mutable_value_is_shared_by_copies() {
    Context::new().run(|| {
        let _guard = LIST.scoped(Mutex::new(Vec::new()));
        let copy = Context::current();
        copy.get(&LIST).unwrap().lock().unwrap().push(1);
        LIST.with(|list| list.unwrap().lock().unwrap().push(2));
        assert_eq!(*copy.get(&LIST).unwrap().lock().unwrap(), [1, 2]);
    });
}

// B9 + S9: the library drops a replaced or reset value only after releasing the thread's
// state, so a value's `Drop` may read and set context variables: on reset, on a token's drop,
// on a guard's drop, when a context or a wrapped future is dropped.
#[test]
fn a_values_drop_may_use_context_variables() {
    let drops = Arc::new(AtomicUsize::new(0));
    let noisy = || UsesContextWhenDropped {
        drops: Arc::clone(&drops),
    };
    Context::new().run(|| {
        let first = NOISY.set(noisy());
        let second = NOISY.set(noisy());
        NOISY.reset(second).unwrap(); // drops the second value
        drop(NOISY.set(noisy())); // the dropped token held the first value: dropped
        NOISY.reset(first).unwrap(); // drops the third value
        {
            let _guard = NOISY.scoped(noisy());
            drop(NOISY.set(noisy()));
        } // the guard drops the values set in its span
        let mut ctx = Context::new().with_value(&NOISY, noisy());
        ctx.run(|| drop(NOISY.set(noisy())));
        drop(ctx);
        let value = noisy();
        let future = async move { drop(value) }.with_context(Context::new());
        drop(future); // never polled: its captured value is dropped inside its context
        assert!(Context::current().is_empty(), "{:?}", Context::current());
    });
    assert_eq!(drops.load(Ordering::SeqCst), 8);
}
