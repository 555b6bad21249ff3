//! The thread's current context: which bindings `get` and `set` see right now.
//!
//! Each thread keeps one [`Frame`]: the bindings of the context being run (by
//! [`Context::run`](crate::Context::run) or a polled [`WithContext`](crate::WithContext)), or,
//! when none is, the thread's own context. Entering a context swaps its frame with the
//! thread's; leaving swaps them back. Both are moves: no reference counts change.
//!
//! The rule for tasks spawned without a context lives here too. The frame belongs to the task
//! that made it current (none, for the thread's own context): a tokio task spawned without a
//! context, polled while another task's context or the thread's own is current, must not see
//! it, since what it holds belongs to someone else. Such a task reads an empty context instead,
//! and cannot write. Entering a context records the running task (`tokio::task::try_id`) as the
//! owner.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::map::{Leaf, Map};

/// What a context holds while it is not entered, and what the thread holds while it is.
pub(crate) struct Frame {
    pub(crate) map: Map,
    /// The context's identity, which tokens and guards check; `0` until something needs it.
    pub(crate) id: u64,
}

impl Frame {
    pub(crate) const EMPTY: Frame = Frame::with_map(Map::EMPTY);

    /// A frame with these bindings and a new identity (assigned on first use).
    pub(crate) const fn with_map(map: Map) -> Frame {
        Frame { map, id: 0 }
    }

    /// A frame with the same bindings and a new identity.
    pub(crate) fn copy(&self) -> Frame {
        Frame::with_map(self.map.clone())
    }

    /// The context's identity, assigned on first use.
    pub(crate) fn id(&mut self) -> u64 {
        if self.id == 0 {
            self.id = fresh_id();
        }
        self.id
    }
}

/// A context id never handed out before, never `0`. Each thread takes ids from a block of its
/// own, so that the first `set` in every new context (every spawned task's) does not contend
/// on one counter shared by all cores.
fn fresh_id() -> u64 {
    const BLOCK: u64 = 1 << 10;
    static NEXT_BLOCK: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        /// The next id of this thread's block, and the end of the block.
        static IDS: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }
    IDS.try_with(|ids| {
        let (next, end) = ids.get();
        if next < end {
            ids.set((next + 1, end));
            next
        } else {
            let start = NEXT_BLOCK.fetch_add(BLOCK, Ordering::Relaxed);
            ids.set((start + 1, start + BLOCK));
            start
        }
    })
    // The thread is exiting: take a block for this one id.
    .unwrap_or_else(|_| NEXT_BLOCK.fetch_add(BLOCK, Ordering::Relaxed))
}

/// A tokio task's identity, or `()` without the `tokio` feature.
#[cfg(feature = "tokio")]
type Task = Option<tokio::task::Id>;
#[cfg(not(feature = "tokio"))]
type Task = ();

/// Code outside any runtime task: plain threads, `block_on`'s root future.
#[cfg(feature = "tokio")]
const NO_TASK: Task = None;
#[cfg(not(feature = "tokio"))]
const NO_TASK: Task = ();

/// The tokio task being polled on this thread, if any.
#[inline]
fn running_task() -> Task {
    #[cfg(feature = "tokio")]
    {
        tokio::task::try_id()
    }
}

struct Current {
    frame: Frame,
}

impl Drop for Current {
    fn drop(&mut self) {
        // The thread is exiting and the frame's values go now: no cached read may reach
        // them any more. (No `reading` check: a panic here would abort, and no read is under
        // way while thread-locals are destroyed.)
        fast(Fast::bump);
    }
}

thread_local! {
    static CURRENT: RefCell<Current> = const { RefCell::new(Current { frame: Frame::EMPTY }) };
}

// ---------------------------------------------------------------------------------------------
// The read cache.
//
// `get` is the operation a service performs most, so it has a fast path: a small per-thread
// table from a variable's key to where its value lives in the current frame, valid while the
// frame has not changed. Every change to the frame (entering or leaving a context, a write,
// the thread's teardown) bumps the thread's `stamp` first, which invalidates every entry at
// once; a read whose entry carries the current stamp goes straight to the value, with no
// lookup in the map and no type check. This is `CPython`'s idea (a variable caches its last
// value with the version of the context it came from), with one table per thread instead of
// one slot per variable, so that it needs nothing from the variable's declaration.
//
// It lives in thread-locals without a destructor, which are reachable at every moment of the
// thread's life (teardown included) and cost no "is it still alive" check.
// ---------------------------------------------------------------------------------------------

/// How many keys the table holds; keys are dense, so `key % CACHE_SLOTS` spreads them.
const CACHE_SLOTS: usize = 64;

/// Where a key's value was in the current frame; null if it was unbound.
#[derive(Clone, Copy)]
struct Entry {
    /// The stamp the entry was made at (high 32 bits) and the key (low 32 bits): one compare
    /// checks both.
    tag: u64,
    value: *const (),
}

struct Fast {
    /// Bumped before every change to the thread's current frame. Kept shifted into the high
    /// 32 bits, as entries' tags hold it; never 0.
    stamp: Cell<u64>,
    /// The task that made the current frame current: `NO_TASK` for the thread's own context
    /// and for a context entered outside any task. Only code of that task sees the frame.
    /// Any other task polled meanwhile on this thread (a task spawned without a context,
    /// polled by a runtime driven inside `Context::run`, or by a `LocalSet` inside a
    /// context's future) sees an empty context and cannot write.
    owner: Cell<Task>,
    /// How many `get`s are cloning a value out of the current frame right now (a `Clone`
    /// impl may read too): the frame must not be written meanwhile. A swap saves and
    /// restores it with the frame.
    reading: Cell<u32>,
    entries: [Cell<Entry>; CACHE_SLOTS],
}

thread_local! {
    static FAST: Fast = const {
        Fast {
            // Entries start with tag 0, which no stamp makes.
            stamp: Cell::new(1 << 32),
            owner: Cell::new(NO_TASK),
            reading: Cell::new(0),
            entries: [const {
                Cell::new(Entry { tag: 0, value: std::ptr::null() })
            }; CACHE_SLOTS],
        }
    };
}

/// Runs `f` on this thread's `FAST`. `LocalKey::with` is not marked `#[inline]`, and on the
/// read path LLVM may leave it an indirect call; `try_with` is, and cannot fail here: a
/// thread-local without a destructor is never torn down.
#[inline(always)]
fn fast<R>(f: impl FnOnce(&Fast) -> R) -> R {
    match FAST.try_with(f) {
        Ok(result) => result,
        Err(_) => unreachable!("a thread-local without a destructor stays accessible"),
    }
}

impl Fast {
    /// Called before a binding of the thread's current frame is added, replaced or removed.
    /// Panics, changing nothing, while a value is being cloned out of the frame.
    #[inline]
    fn changed(&self) {
        if self.reading.get() != 0 {
            reentered();
        }
        self.bump();
    }

    /// Invalidates every entry of the read cache.
    #[inline]
    fn bump(&self) {
        let next = self.stamp.get().wrapping_add(1 << 32);
        if next == 0 {
            self.wrap();
        } else {
            self.stamp.set(next);
        }
    }

    /// After 2^32 changes the stamps start over: forget every entry first, so that none made
    /// at an old stamp can match a new one.
    #[cold]
    fn wrap(&self) {
        for entry in &self.entries {
            entry.set(Entry {
                tag: 0,
                value: std::ptr::null(),
            });
        }
        self.stamp.set(1 << 32);
    }

    /// Whether the code running now may see and write the current frame.
    #[inline]
    fn visible(&self) -> bool {
        running_task() == self.owner.get()
    }

    #[inline]
    fn entry(&self, key: u32) -> &Cell<Entry> {
        &self.entries[key as usize % CACHE_SLOTS]
    }
}

/// The one way to write to the frame while it is being read: `get` clones the value out of the
/// frame without a reference count, and that `Clone` impl sets or resets a variable.
const REENTERED: &str = "contextvars: a context variable was set or reset from a `Clone` impl \
     while `get` was cloning that value out of the context; read such a value with `with` \
     instead, which releases the context before calling you";

#[cold]
#[inline(never)]
#[track_caller]
fn reentered() -> ! {
    panic!("{REENTERED}")
}

/// A clone of `key`'s value, of type `T`, in the context visible here, if it is bound there.
///
/// Each key belongs to one variable, which stores values of one type: `T` must be it. `key`
/// may be `0` for a variable that has none yet (it then misses the cache, which holds no
/// key `0`); `assign_key` gives the real one.
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn get_cloned<T: Clone + Send + Sync + 'static>(
    key: u32,
    assign_key: impl FnOnce() -> u32,
) -> Option<T> {
    fast(|fast| {
        let entry = fast.entry(key).get();
        let value = if entry.tag == fast.stamp.get() | u64::from(key) {
            entry.value
        } else {
            fill::<T>(fast, assign_key())
        };
        if value.is_null() || !fast.visible() {
            return None;
        }
        let _reading = Reading::begin(fast);
        // SAFETY: `value` points to a live `T`, and stays valid while `clone` runs:
        // - It was taken, with the stamp the entry's tag carries (`fill`), from the value of a leaf
        //   of the thread's current frame, after checking that the value is a `T`. Every key
        //   belongs to one variable, whose values all have one type, so any reader of this
        //   key reads it as that same `T`.
        // - The stamp is unchanged (stamps are never reused: `Fast::wrap` clears the table
        //   before they start over), so the frame has not changed since: every change to it
        //   (a swap in `Entered` and the hooks, a write through `write`, `drop_bindings`, the
        //   thread's teardown in `Current`'s `Drop`) bumps the stamp first, and nothing
        //   outside this file reaches `CURRENT`. The frame holds its map's root, the root
        //   holds the leaf, the leaf holds the `Arc` of the value. Nodes shared with other
        //   maps are never written (writes go through `Arc::make_mut`, which copies a shared
        //   node), and this frame's own nodes are written only through `write`. So the `Arc`
        //   and the value it owns are alive and unmoved.
        // - While `clone` runs, `reading` counts this read, and a write to the frame that
        //   holds the value (`Fast::changed`) panics before it changes anything: a `Clone`
        //   impl that sets or resets a variable cannot free the value it is being cloned
        //   from. Entering a context from it is allowed: the swap moves this frame, unchanged,
        //   into the entered context's storage, which stays borrowed until the swap back, and
        //   moves the count with it (`swap`), so that only the entered context is writable.
        let value = unsafe { &*value.cast::<T>() };
        Some(value.clone())
    })
}

/// Looks `key` up in the current frame and records where its value is (null where it is
/// unbound), for this stamp. Null, recording nothing, once the thread's frame is gone.
#[cold]
#[inline(never)]
fn fill<T: Send + Sync + 'static>(fast: &Fast, key: u32) -> *const () {
    let value = CURRENT.try_with(|current| {
        let current = current.try_borrow().unwrap_or_else(|_| reentered());
        current.frame.map.get(key).map_or(std::ptr::null(), |leaf| {
            assert!(
                leaf.value.is::<T>(),
                "contextvars: a binding of `{}` holds another type",
                std::any::type_name::<T>()
            );
            Arc::as_ptr(&leaf.value).cast::<()>()
        })
    });
    let Ok(value) = value else {
        return std::ptr::null();
    };
    fast.entry(key).set(Entry {
        tag: fast.stamp.get() | u64::from(key),
        value,
    });
    value
}

/// Counts one read in `reading` for as long as it lives, also when `clone` panics.
struct Reading<'a> {
    fast: &'a Fast,
}

impl<'a> Reading<'a> {
    #[inline]
    fn begin(fast: &'a Fast) -> Self {
        fast.reading.set(fast.reading.get() + 1);
        Reading { fast }
    }
}

impl Drop for Reading<'_> {
    #[inline]
    fn drop(&mut self) {
        self.fast.reading.set(self.fast.reading.get() - 1);
    }
}

/// Runs `f` on `key`'s binding in the context visible here, if it has one.
///
/// `f` runs with the thread's state borrowed: it may read variables, not set them.
#[inline]
pub(crate) fn find<R>(key: u32, f: impl FnOnce(&Leaf) -> R) -> Option<R> {
    CURRENT
        .try_with(|current| {
            let current = current.try_borrow().unwrap_or_else(|_| reentered());
            // Look first: a key bound nowhere reads as unset whoever is running, so only a
            // hit needs to ask tokio which task that is.
            let leaf = current.frame.map.get(key)?;
            fast(Fast::visible).then(|| f(leaf))
        })
        // Once the thread is being torn down, its context is gone.
        .ok()
        .flatten()
}

/// Why there is no frame to write to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unwritable {
    /// A tokio task polled outside any context.
    NoContext,
    /// A thread whose context is already torn down (a value's `Drop` at thread exit).
    ThreadExiting,
}

/// Runs `f` on the thread's current frame to change it, after invalidating the read cache,
/// with what `Fast` says of the frame. `None` once the thread's state is gone.
#[inline]
fn change<R>(f: impl FnOnce(&mut Frame, &Fast) -> R) -> Option<R> {
    CURRENT
        .try_with(|current| {
            let mut current = current.try_borrow_mut().unwrap_or_else(|_| reentered());
            fast(|fast| {
                fast.changed();
                f(&mut current.frame, fast)
            })
        })
        .ok()
}

/// What a swap replaces besides the frame, to be put back when swapping back.
#[derive(Clone, Copy)]
struct Outer {
    owner: Task,
    /// Reads under way in the frame swapped out (see `Fast::reading`).
    reading: u32,
}

/// Swaps `frame` with the thread's current frame, which `outer` now describes; returns what
/// described the frame swapped out. `None` (nothing swapped) once the thread's state is gone.
///
/// Unlike a write, a swap is allowed while `get` clones a value (a `Clone` impl may run code
/// in a context of its own): the frame that holds the value is moved, unchanged, into the
/// storage of the entered context, which stays borrowed until the swap back. The count of
/// reads under way moves with it, so that the entered context can be written freely.
#[inline]
fn swap(frame: &mut Frame, outer: Outer) -> Option<Outer> {
    CURRENT
        .try_with(|current| {
            let mut current = current.try_borrow_mut().unwrap_or_else(|_| reentered());
            fast(|fast| {
                fast.bump();
                std::mem::swap(&mut current.frame, frame);
                Outer {
                    owner: fast.owner.replace(outer.owner),
                    reading: fast.reading.replace(outer.reading),
                }
            })
        })
        .ok()
}

/// Runs `f` on the frame that `set` writes to.
///
/// # Errors
/// [`Unwritable`] where there is none.
#[inline]
pub(crate) fn write<R>(f: impl FnOnce(&mut Frame) -> R) -> Result<R, Unwritable> {
    // `f` owns values (the one being set, a token's old value, a guard's saved map): where it
    // is not called, it is dropped after the borrow ends, so that their `Drop` may read
    // variables.
    let mut f = Some(f);
    let result = change(|frame, fast| {
        if fast.visible() {
            Ok(f.take().expect("called once")(frame))
        } else {
            Err(Unwritable::NoContext)
        }
    });
    result.unwrap_or(Err(Unwritable::ThreadExiting))
}

/// Drops every binding of the current context, inside it, one at a time: while a value is
/// dropped, the values not dropped yet are still bound, so its `Drop` may read them, and may
/// set variables (what it sets is dropped in the next round, until nothing is left). Values
/// go in the reverse order of their variables' keys (first use in the process), newest
/// first, as locals drop in reverse order of declaration.
///
/// The caller has just entered the context whose values are to go, so the frame is visible.
pub(crate) fn drop_bindings() {
    loop {
        let mut keys = Vec::new();
        change(|frame, _| keys.extend(frame.map.iter().map(|leaf| leaf.key)));
        if keys.is_empty() {
            break;
        }
        keys.sort_unstable_by(|a, b| b.cmp(a));
        for key in keys {
            let value = change(|frame, _| frame.map.remove(key));
            // Dropped with the thread state released.
            drop(value);
        }
    }
}

/// A copy of the visible bindings (empty in a task outside any context).
#[inline]
pub(crate) fn snapshot() -> Map {
    CURRENT
        .try_with(|current| {
            let current = current.try_borrow().unwrap_or_else(|_| reentered());
            if fast(Fast::visible) {
                current.frame.map.clone()
            } else {
                Map::EMPTY
            }
        })
        .unwrap_or_default()
}

/// While alive, `frame` is the thread's current context. Dropping it (on return, on early
/// return, on panic) writes the context's new bindings back into `frame` and restores what
/// was current before.
pub(crate) struct Entered<'a> {
    frame: &'a mut Frame,
    /// What described what was current before; `None` if nothing was swapped (thread
    /// exiting).
    outer: Option<Outer>,
}

impl<'a> Entered<'a> {
    #[inline]
    pub(crate) fn new(frame: &'a mut Frame) -> Self {
        let owner = running_task();
        let outer = swap(frame, Outer { owner, reading: 0 });
        Entered { frame, outer }
    }
}

impl Drop for Entered<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Some(outer) = self.outer {
            // If the thread state is gone by now, the bindings went with it.
            swap(self.frame, outer);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Entering a frame owned elsewhere, for the runtime hooks (feature `hooks`).
//
// The hooks enter a task's context in one callback (before the poll) and leave it in another
// (after the poll), so they cannot hold an `Entered` borrow across the poll. These two calls
// are the same swap as `Entered::new` and its `Drop`, split in two: the caller keeps `frame`
// (the task's, between the calls the thread's previous one) and the returned owner, and hands
// both back to `exit_owned`.
// ---------------------------------------------------------------------------------------------

/// Makes `frame` the thread's current context for `task`, which need not be the task tokio
/// reports as running now (inside a poll hook it is not). `frame` receives what was current;
/// the result is its owner, for [`exit_owned`]. `None` if the thread's state is gone (then
/// nothing was swapped and `exit_owned` must not be called).
#[cfg(feature = "hooks")]
#[inline]
pub(crate) fn enter_owned(frame: &mut Frame, task: tokio::task::Id) -> Option<Task> {
    // No read is under way between polls.
    let outer = swap(
        frame,
        Outer {
            owner: Some(task),
            reading: 0,
        },
    )?;
    Some(outer.owner)
}

/// Undoes [`enter_owned`]: `frame` (holding what was current before) becomes current again,
/// owned by `outer_owner`, and `frame` receives the task's bindings back.
#[cfg(feature = "hooks")]
#[inline]
pub(crate) fn exit_owned(frame: &mut Frame, outer_owner: Task) {
    // If the thread state is gone by now, the bindings went with it.
    swap(
        frame,
        Outer {
            owner: outer_owner,
            reading: 0,
        },
    );
}
