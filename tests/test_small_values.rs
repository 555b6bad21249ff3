//! Small `Copy` values (a `u64`, a `&'static str`) are stored in the context itself: setting
//! one allocates nothing. Every other value is shared between a context and its copies, as
//! before: a value with interior mutability is one value in both.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use contextvars::{Context, context_var};

/// Counts the allocations made by the thread that reads the count.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is passed on to `System` unchanged; the count is a `const` thread-local
// `Cell`, which neither allocates nor panics (`try_with` fails quietly during thread teardown).
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations_in(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[context_var]
static ID: u64;

#[context_var]
static USER: &'static str;

/// `Copy`, two words.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Span {
    trace: u64,
    span: u64,
}

#[context_var]
static SPAN: Span;

#[context_var]
static NAME: String;

/// Not `Copy`: interior mutability, which every context sharing the value must see.
#[context_var]
static COUNTER: AtomicU64;

#[test]
fn setting_a_small_copy_value_allocates_nothing() {
    Context::new().run(|| {
        // The first sets give the variables their ids and the context its map.
        let warm = (
            ID.set(0),
            USER.set(""),
            SPAN.set(Span { trace: 0, span: 0 }),
        );
        let allocations = allocations_in(|| {
            for i in 0..100 {
                let id = ID.set(i);
                let user = USER.set("ann");
                let span = SPAN.set(Span { trace: i, span: 1 });
                assert_eq!(ID.get(), Some(i));
                assert_eq!(USER.get(), Some("ann"));
                assert_eq!(SPAN.get(), Some(Span { trace: i, span: 1 }));
                SPAN.reset(span).unwrap();
                USER.reset(user).unwrap();
                ID.reset(id).unwrap();
            }
        });
        assert_eq!(allocations, 0);
        assert_eq!(ID.get(), Some(0));
        drop(warm);
    });
}

#[test]
fn a_larger_value_still_allocates() {
    Context::new().run(|| {
        let _warm = NAME.set(String::new());
        // One allocation for the `String`'s text, one for sharing it.
        let allocations = allocations_in(|| {
            let token = NAME.set("ann".to_string());
            NAME.reset(token).unwrap();
        });
        assert_eq!(allocations, 2);
    });
}

#[test]
fn small_values_stay_apart_between_a_context_and_its_copies() {
    let mut outer = Context::new()
        .with_value(&ID, 1)
        .with_value(&USER, "ann")
        .with_value(&SPAN, Span { trace: 1, span: 2 });
    let mut copy = outer.clone();
    copy.run(|| {
        let _id = ID.set(2);
        let _user = USER.set("bob");
        assert_eq!((ID.get(), USER.get()), (Some(2), Some("bob")));
        assert_eq!(SPAN.get(), Some(Span { trace: 1, span: 2 }));
    });
    outer.run(|| {
        let snapshot = Context::current();
        let token = ID.set(3);
        assert_eq!(snapshot.get(&ID), Some(&1));
        assert_eq!(token.old_value(), Some(&1));
        assert!(ID.with(|id| id == Some(&3)));
        assert_eq!(USER.get(), Some("ann"));
    });
    assert_eq!(copy.get(&ID), Some(&2));
    assert_eq!(copy.get(&USER), Some(&"bob"));
    assert_eq!(
        format!("{:?}", outer.get(&SPAN)),
        "Some(Span { trace: 1, span: 2 })"
    );
}

#[test]
fn a_value_with_interior_mutability_is_one_value_in_every_copy() {
    let mut outer = Context::new().with_value(&COUNTER, AtomicU64::new(0));
    let mut copy = outer.clone();
    copy.run(|| COUNTER.with(|c| c.unwrap().fetch_add(1, Ordering::Relaxed)));
    // A set elsewhere copies the map's node, not the value.
    copy.run(|| drop(ID.set(1)));
    copy.run(|| COUNTER.with(|c| c.unwrap().fetch_add(1, Ordering::Relaxed)));
    outer.run(|| {
        assert_eq!(COUNTER.with(|c| c.unwrap().load(Ordering::Relaxed)), 2);
    });
}

/// A `Copy` type whose `Clone` (against the convention) does more than copy: here, count.
#[derive(Copy, Debug, PartialEq)]
struct Counted(u64);

static CLONES: AtomicU64 = AtomicU64::new(0);

#[allow(clippy::expl_impl_clone_on_copy, clippy::non_canonical_clone_impl)]
impl Clone for Counted {
    fn clone(&self) -> Self {
        CLONES.fetch_add(1, Ordering::Relaxed);
        *self
    }
}

#[context_var]
static COUNTED: Counted;

#[test]
fn get_copies_a_copy_value_without_calling_its_clone() {
    let _token = COUNTED.set(Counted(7));
    let before = CLONES.load(Ordering::Relaxed);
    for _ in 0..3 {
        assert_eq!(COUNTED.get(), Some(Counted(7)));
    }
    assert_eq!(Context::current().run(|| COUNTED.get()), Some(Counted(7)));
    assert_eq!(CLONES.load(Ordering::Relaxed), before);
}
