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
//! owner. The owner may write to the frame unless the runtime hooks entered it for a task that
//! only inherited it (a plain `tokio::spawn`): that task reads it and cannot write.

use std::cell::{Cell, RefCell};
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::map::{Leaf, Map};

/// What a context holds while it is not entered, and what the thread holds while it is.
pub(crate) struct Frame {
    pub(crate) map: Map,
    /// The context's identity, which tokens and guards check; `0` until something needs it.
    /// [`READ_ONLY`] marks a context that its task only inherited (the runtime hooks' context
    /// of a task spawned with plain `tokio::spawn`): it is read, never written.
    pub(crate) id: u64,
}

/// The bit of [`Frame::id`] that marks a read-only context. Kept in the id, which the write
/// path reads anyway, so that entering and leaving contexts (the hot paths) carry no flag of
/// their own. Ids are handed out from 1 upwards and never come near it.
const READ_ONLY: u64 = 1 << 63;

/// The context id of a token or guard that no context owns (made while the thread's locals
/// were being destroyed): no frame's id is ever equal to it, so such a token resets nothing.
/// (Ids count up from 1 and never come near it; a read-only frame, whose id carries
/// [`READ_ONLY`], refuses every write before its id is compared.)
pub(crate) const NO_CONTEXT: u64 = u64::MAX;

/// The bit of [`Frame::id`] that marks a context whose bindings carry a span or
/// OpenTelemetry's context (in their map's root): entering it enters those too. Kept in the
/// id, beside the bindings, so that entering a context checks one bit of what it moves anyway.
/// Only ever set together with an identity, so that [`Frame::id`] never hands out the bit
/// alone.
const CARRIES: u64 = 1 << 62;

impl Frame {
    pub(crate) const EMPTY: Frame = Frame::with_map(Map::EMPTY);

    /// A frame with these bindings and a new identity (assigned on first use).
    pub(crate) const fn with_map(map: Map) -> Frame {
        Frame { map, id: 0 }
    }

    /// A frame with the same bindings and a new identity.
    #[inline]
    pub(crate) fn copy(&self) -> Frame {
        let mut frame = Frame::with_map(self.map.clone());
        if self.carries() {
            frame.id = fresh_id() | CARRIES;
        }
        frame
    }

    /// A frame with these bindings and a new identity, marked if they carry something.
    pub(crate) fn carrying(map: Map) -> Frame {
        let mut frame = Frame::with_map(map);
        frame.mark_carrying();
        frame
    }

    /// Marks the frame as its bindings say: carrying something or not. Called wherever what
    /// they carry may have changed.
    pub(crate) fn mark_carrying(&mut self) {
        if self.map.carried().is_some() {
            if self.id & !(READ_ONLY | CARRIES) == 0 {
                self.id |= fresh_id();
            }
            self.id |= CARRIES;
        } else {
            self.id &= !CARRIES;
        }
    }

    /// Whether the bindings carry a span or OpenTelemetry's context.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub(crate) fn carries(&self) -> bool {
        // Without the features, never: no check at all.
        cfg!(any(feature = "tracing", feature = "opentelemetry")) && self.id & CARRIES != 0
    }

    /// The context's identity, assigned on first use. Inlined: every `set` reads it, and
    /// only the first in a context takes a fresh one.
    #[inline]
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

thread_local! {
    /// The thread's current frame. Held without a destructor (`ManuallyDrop`), so that every
    /// access is a plain thread-local access with no "is it still alive" check: reads and
    /// swaps are the hot paths. `TEARDOWN` drops the frame's values at thread exit instead.
    static CURRENT: ManuallyDrop<RefCell<Current>> =
        const { ManuallyDrop::new(RefCell::new(Current { frame: Frame::EMPTY })) };

    /// Registered by the first write on the thread (nothing else can leave values in
    /// `CURRENT`: a swap always swaps back): at thread exit it takes the thread's own
    /// context out of `CURRENT` and drops its values. Once it has run, writes are refused
    /// (`Unwritable::ThreadExiting`), so nothing can be left behind to leak.
    static TEARDOWN: Teardown = const { Teardown };
}

/// Runs `f` on this thread's `CURRENT` (see [`fast`] for why not `LocalKey::with`).
#[allow(clippy::inline_always)]
#[inline(always)]
fn current<R>(f: impl FnOnce(&RefCell<Current>) -> R) -> R {
    // A deferred enter of the runtime hooks happens before anything reaches the frame.
    fast(Fast::resolve);
    match CURRENT.try_with(|current| f(current)) {
        Ok(result) => result,
        Err(_) => unreachable!("a thread-local without a destructor stays accessible"),
    }
}

/// Whether this thread may still write: registers [`TEARDOWN`] on first use, and says no
/// once it has run.
#[inline]
fn may_write() -> bool {
    TEARDOWN.try_with(|_| ()).is_ok()
}

struct Teardown;

impl Drop for Teardown {
    fn drop(&mut self) {
        // The thread is exiting and its context's values go now: no cached read may reach
        // them any more. (No `reading` check: a panic here would abort, and no read is under
        // way while thread-locals are destroyed.)
        fast(Fast::bump);
        let frame = current(|current| {
            std::mem::replace(
                &mut current
                    .try_borrow_mut()
                    .unwrap_or_else(|_| reentered())
                    .frame,
                Frame::EMPTY,
            )
        });
        // Dropped with nothing borrowed: a value's `Drop` may read (it finds nothing) and
        // try to set (it is refused). A panic in it would abort the process here, inside a
        // thread-local's destructor: the panic hook prints it, and it goes no further.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(frame)));
    }
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

/// Where a key's value was in the current frame.
#[derive(Clone, Copy)]
struct Entry {
    /// The stamp the entry was made at (the high 31 bits), [`UNBOUND`] if the key was
    /// unbound then, and the key (the low 32 bits): one compare checks all three.
    tag: u64,
    /// The value; null for an unbound key.
    value: *const (),
}

/// One step of `Fast::stamp`, which lives above the [`UNBOUND`] bit and the key.
const STAMP_STEP: u64 = 1 << 33;

/// The tag bit of an entry that found its key unbound.
const UNBOUND: u64 = 1 << 32;

struct Fast {
    /// Bumped (by [`STAMP_STEP`]) before every change to the thread's current frame. Kept
    /// shifted into the high bits, as entries' tags hold it; never 0.
    stamp: Cell<u64>,
    /// The task that made the current frame current: `NO_TASK` for the thread's own context
    /// and for a context entered outside any task. Only code of that task sees the frame.
    /// Any other task polled meanwhile on this thread (a task spawned without a context,
    /// polled by a runtime driven inside `Context::run`, or by a `LocalSet` inside a
    /// context's future) sees an empty context and cannot write.
    owner: Cell<Task>,
    /// Whether a `get` is cloning a value out of the current frame right now: the frame must
    /// not be written meanwhile (`Fast::refuse_while_reading`).
    reading: Cell<bool>,
    entries: [Cell<Entry>; CACHE_SLOTS],
    /// A task's context that the runtime hooks want current for the poll under way, entered
    /// only once something on this thread needs the current frame (see [`enter_later`]).
    #[cfg(feature = "hooks")]
    pending: Cell<Option<Pending>>,
}

/// A deferred enter: `enter(task)` makes `task`'s context current.
#[cfg(feature = "hooks")]
#[derive(Clone, Copy)]
struct Pending {
    task: tokio::task::Id,
    enter: fn(tokio::task::Id),
}

thread_local! {
    static FAST: Fast = const {
        Fast {
            // Entries start with tag 0, which no stamp makes.
            stamp: Cell::new(STAMP_STEP),
            owner: Cell::new(NO_TASK),
            reading: Cell::new(false),
            entries: [const {
                Cell::new(Entry { tag: 0, value: std::ptr::null() })
            }; CACHE_SLOTS],
            #[cfg(feature = "hooks")]
            pending: Cell::new(None),
        }
    };
}

/// Runs `f` on this thread's `FAST`. `LocalKey::with` is not marked `#[inline]`, and on the
/// read path LLVM may leave it an indirect call; `try_with` is, and cannot fail here: a
/// thread-local without a destructor is never torn down.
// Measured: with a plain `#[inline]`, `get` sometimes became a call through a function
// pointer, 62 instructions instead of 37.
#[allow(clippy::inline_always)]
#[inline(always)]
fn fast<R>(f: impl FnOnce(&Fast) -> R) -> R {
    match FAST.try_with(f) {
        Ok(result) => result,
        Err(_) => unreachable!("a thread-local without a destructor stays accessible"),
    }
}

impl Fast {
    /// Carries out a deferred enter (see [`enter_later`]), if one is waiting: [`current`], the
    /// only way to the frame, calls it first. `get`'s cache hits do not reach the frame, and
    /// cannot happen while an enter waits (`enter_later` bumps the stamp).
    #[inline]
    #[cfg_attr(not(feature = "hooks"), allow(clippy::unused_self))]
    fn resolve(&self) {
        #[cfg(feature = "hooks")]
        if let Some(pending) = self.pending.take() {
            (pending.enter)(pending.task);
        }
    }

    /// Called before a binding of the thread's current frame is added, replaced or removed:
    /// panics, changing nothing, while `get` clones a value (the `Clone` impl sets a variable).
    /// It may have entered a context of its own first, which would be safe to write to; that
    /// is refused too, since nothing here tracks which frame the read is in.
    #[inline]
    fn refuse_while_reading(&self) {
        if self.reading.get() {
            reentered();
        }
    }

    /// Invalidates every entry of the read cache.
    #[inline]
    fn bump(&self) {
        let next = self.stamp.get().wrapping_add(STAMP_STEP);
        if next == 0 {
            self.wrap();
        } else {
            self.stamp.set(next);
        }
    }

    /// After 2^31 changes the stamps start over: forget every entry first, so that none made
    /// at an old stamp can match a new one.
    #[cold]
    fn wrap(&self) {
        for entry in &self.entries {
            entry.set(Entry {
                tag: 0,
                value: std::ptr::null(),
            });
        }
        self.stamp.set(STAMP_STEP);
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
// `get`'s whole fast path; see `fast` for why always.
#[allow(clippy::inline_always)]
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn get_cloned<T: Clone + Send + Sync + 'static>(
    key: u32,
    assign_key: impl FnOnce() -> u32,
) -> Option<T> {
    fast(|fast| {
        let tag = fast.stamp.get() | u64::from(key);
        let entry = fast.entry(key).get();
        let value = if entry.tag == tag {
            entry.value
        } else if entry.tag == tag | UNBOUND {
            return None;
        } else {
            fill::<T>(fast, assign_key())?
        };
        if !fast.visible() {
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
        //   thread's teardown in `Teardown`'s `Drop`) bumps the stamp first, and nothing
        //   outside this file reaches `CURRENT` (which has no destructor of its own: its
        //   frame is only ever dropped by `Teardown`). The frame holds its map's root, the root
        //   holds the leaf, the leaf holds the value: in place (a small `Copy` value, inside
        //   its node's slots, which only a write to that node moves) or in an `Arc`. Nodes
        //   shared with other maps are never written (writes go through `Arc::make_mut`, which
        //   copies a shared node), and this frame's own nodes are written only through `write`.
        //   So the value is alive and unmoved.
        // - While `clone` runs, `reading` is set, and a write (`write`, which calls
        //   `Fast::refuse_while_reading`) panics before it changes anything: a `Clone` impl
        //   that sets or resets a variable cannot free the value it is being cloned from.
        //   Entering a context from it is allowed: the swap moves this frame, unchanged, into
        //   the entered context's storage, which stays borrowed until the swap back; and
        //   `drop_bindings` only ever empties a context just entered, never this frame.
        let value = unsafe { &*value.cast::<T>() };
        Some(value.clone())
    })
}

/// Looks `key` up in the current frame and records where its value is (or that it is
/// unbound), for this stamp. `None` where it is unbound.
#[cold]
#[inline(never)]
fn fill<T: Send + Sync + 'static>(fast: &Fast, key: u32) -> Option<*const ()> {
    let value = current(|current| {
        let current = current.try_borrow().unwrap_or_else(|_| reentered());
        current.frame.map.get(key).map_or(std::ptr::null(), |leaf| {
            assert!(
                leaf.value.as_any().is::<T>(),
                "contextvars: a binding of `{}` holds another type",
                std::any::type_name::<T>()
            );
            leaf.value.as_ptr()
        })
    });
    let unbound = if value.is_null() { UNBOUND } else { 0 };
    fast.entry(key).set(Entry {
        tag: fast.stamp.get() | unbound | u64::from(key),
        value,
    });
    (!value.is_null()).then_some(value)
}

/// Sets `reading` for as long as it lives, then puts back what it was (a `Clone` impl may
/// read too), also when `clone` panics.
struct Reading<'a> {
    fast: &'a Fast,
    outer: bool,
}

impl<'a> Reading<'a> {
    #[inline]
    fn begin(fast: &'a Fast) -> Self {
        let outer = fast.reading.replace(true);
        Reading { fast, outer }
    }
}

impl Drop for Reading<'_> {
    #[inline]
    fn drop(&mut self) {
        self.fast.reading.set(self.outer);
    }
}

/// Runs `f` on `key`'s binding in the context visible here, if it has one.
///
/// `f` runs with the thread's state borrowed: it may read variables, not set them.
#[inline]
pub(crate) fn find<R>(key: u32, f: impl FnOnce(&Leaf) -> R) -> Option<R> {
    current(|current| {
        let current = current.try_borrow().unwrap_or_else(|_| reentered());
        // Look first: a key bound nowhere reads as unset whoever is running, so only a
        // hit needs to ask tokio which task that is.
        let leaf = current.frame.map.get(key)?;
        fast(Fast::visible).then(|| f(leaf))
    })
}

/// Why there is no frame to write to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unwritable {
    /// A tokio task polled outside any context.
    NoContext,
    /// A task whose context the runtime hooks inherited from its spawner, for reading only.
    Inherited,
    /// A thread whose context is already torn down (a value's `Drop` at thread exit).
    ThreadExiting,
}

/// Runs `f` on the thread's current frame to change it, after invalidating the read cache, for
/// a frame the caller has just entered: no read can be under way in it, since `get` only reads
/// the frame current when it starts, and that frame is now swapped out. It only ever removes
/// bindings, so it needs no `may_write`.
#[inline]
fn change_entered<R>(f: impl FnOnce(&mut Frame, &Fast) -> R) -> R {
    current(|current| {
        let mut current = current.try_borrow_mut().unwrap_or_else(|_| reentered());
        fast(|fast| {
            fast.bump();
            f(&mut current.frame, fast)
        })
    })
}

/// Swaps `frame` with the thread's current frame and makes `owner` its owner; returns the
/// previous owner.
///
/// Unlike a write, a swap is allowed while `get` clones a value (a `Clone` impl may run code
/// in a context of its own): the frame that holds the value is moved, unchanged, into the
/// storage of the entered context, which stays borrowed until the swap back.
#[inline]
fn swap(frame: &mut Frame, owner: Task) -> Task {
    current(|current| {
        let mut current = current.try_borrow_mut().unwrap_or_else(|_| reentered());
        fast(|fast| {
            fast.bump();
            std::mem::swap(&mut current.frame, frame);
            fast.owner.replace(owner)
        })
    })
}

/// Runs `f` on the frame that `set` writes to.
///
/// # Errors
/// [`Unwritable`] where there is none.
#[inline]
pub(crate) fn write<R>(f: impl FnOnce(&mut Frame) -> R) -> Result<R, Unwritable> {
    // `f` owns values (a guard's saved map, a binding): where it is not called, it is
    // dropped here, after the borrow ends, so that their `Drop` may read variables.
    write_with(f, |frame, f| f(frame)).map_err(|(why, _f)| why)
}

/// [`write`], with what `f` owns passed to it apart (the value being set, a token's old
/// value), and handed back where `f` is not called, for the caller to drop with the thread
/// state released. `set` and `reset` use it: their values then move once, into `f`, with no
/// `Option` around the closure to fill, take and check.
///
/// # Errors
/// [`Unwritable`] where there is no frame to write to, with `owned` back.
#[inline]
pub(crate) fn write_with<A, R>(
    owned: A,
    f: impl FnOnce(&mut Frame, A) -> R,
) -> Result<R, (Unwritable, A)> {
    if !may_write() {
        return Err((Unwritable::ThreadExiting, owned));
    }
    current(|current| {
        // Before the borrow: should it panic, `owned` is dropped with nothing borrowed.
        fast(Fast::refuse_while_reading);
        let mut current = current.try_borrow_mut().unwrap_or_else(|_| reentered());
        fast(|fast| {
            if !fast.visible() {
                Err((Unwritable::NoContext, owned))
            } else if current.frame.id & READ_ONLY != 0 {
                Err((Unwritable::Inherited, owned))
            } else {
                // Only a write that happens invalidates the read cache.
                fast.bump();
                Ok(f(&mut current.frame, owned))
            }
        })
    })
}

/// Drops the bindings of `frame`, a context's own (its root no other context shares), inside
/// that context ([`drop_bindings`]). Where every value is held in place, no `Drop` can run:
/// the bindings are released at once, without entering the context.
pub(crate) fn drop_values(frame: &mut Frame) {
    if frame.map.holds_no_drop() {
        std::mem::take(&mut frame.map).release();
    } else {
        let _entered = Entered::new(frame);
        drop_bindings();
    }
}

/// Drops every binding of the current context, inside it. The values it alone holds go one
/// at a time: while a value is dropped, the values not dropped yet are still bound, so its
/// `Drop` may read them, and may set variables (what it sets is dropped in the next round,
/// until nothing is left). They go in the reverse order of their variables' keys (first use
/// in the process), newest first, as locals drop in reverse order of declaration. What is
/// left is shared with other contexts (a snapshot's bindings): it is released at once, still
/// inside the context, which only lowers reference counts (and should another owner let go
/// at the same moment, the last release still happens inside a context).
///
/// A value whose `Drop` panics does not stop the others: each is dropped on its own, and the
/// first panic is raised again once all are gone (unless the thread is already unwinding from
/// another panic, where a second one would abort the process: the panic hook has printed it,
/// and it goes no further).
///
/// The caller has just entered the context whose values are to go, so the frame is visible.
pub(crate) fn drop_bindings() {
    let mut first_panic = None;
    loop {
        let mut keys = Keys::default();
        // The bindings left, once no value is this context's alone.
        let shared = change_entered(|frame, _| {
            frame.map.owned_keys(&mut keys);
            keys.is_empty().then(|| std::mem::take(&mut frame.map))
        });
        if let Some(shared) = shared {
            // Released with the thread state released; its root is kept for the next context.
            catch_drop_panic(move || shared.release(), &mut first_panic);
            // Should that release have dropped a value after all (its other owner let go at
            // the same moment) and its `Drop` have set something, that goes in another round.
            if change_entered(|frame, _| frame.map.len() == 0) {
                break;
            }
            continue;
        }
        let keys = keys.as_mut_slice();
        keys.sort_unstable_by(|a, b| b.cmp(a));
        for &key in &*keys {
            let value = change_entered(|frame, _| frame.map.remove(key));
            // Dropped with the thread state released.
            catch_drop_panic(move || drop(value), &mut first_panic);
        }
    }
    if let Some(payload) = first_panic {
        if !std::thread::panicking() {
            std::panic::resume_unwind(payload);
        }
    }
}

/// The keys of the values [`drop_bindings`] drops in one round: the first few on the stack
/// (a request's context holds a few), the rest in a `Vec`.
#[derive(Default)]
struct Keys {
    few: [u32; 8],
    len: usize,
    more: Vec<u32>,
}

impl Extend<u32> for Keys {
    fn extend<I: IntoIterator<Item = u32>>(&mut self, keys: I) {
        for key in keys {
            if let Some(slot) = self.few.get_mut(self.len) {
                *slot = key;
                self.len += 1;
            } else {
                self.more.push(key);
            }
        }
    }
}

impl Keys {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// All the keys, in no particular order.
    fn as_mut_slice(&mut self) -> &mut [u32] {
        if self.more.is_empty() {
            &mut self.few[..self.len]
        } else {
            self.more.extend_from_slice(&self.few[..self.len]);
            &mut self.more
        }
    }
}

/// Runs `drop` (which drops values), keeping the first panic of a `Drop` in `first_panic`.
fn catch_drop_panic(drop: impl FnOnce(), first_panic: &mut Option<Box<dyn std::any::Any + Send>>) {
    if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(drop)) {
        first_panic.get_or_insert(payload);
    }
}

/// A copy of the visible bindings (empty in a task outside any context).
#[inline]
pub(crate) fn snapshot() -> Map {
    current(|current| {
        let current = current.try_borrow().unwrap_or_else(|_| reentered());
        if fast(Fast::visible) {
            current.frame.map.clone()
        } else {
            Map::EMPTY
        }
    })
}

/// While alive, `frame` is the thread's current context. Dropping it (on return, on early
/// return, on panic) writes the context's new bindings back into `frame` and restores what
/// was current before.
pub(crate) struct Entered<'a> {
    frame: &'a mut Frame,
    /// The owner of what was current before.
    outer_owner: Task,
}

impl<'a> Entered<'a> {
    #[inline]
    pub(crate) fn new(frame: &'a mut Frame) -> Self {
        let outer_owner = swap(frame, running_task());
        Entered { frame, outer_owner }
    }
}

impl Drop for Entered<'_> {
    #[inline]
    fn drop(&mut self) {
        swap(self.frame, self.outer_owner);
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

/// For the before-poll hook: `task`'s context is to be current for the poll that starts, but
/// `enter(task)` makes it current only when something on this thread first needs the current
/// frame: a read that misses the cache, a write, a snapshot, entering another context. A poll
/// that touches no variable (most polls of most tasks: a socket read, a timer) then costs the
/// hooks no lock at all.
#[cfg(feature = "hooks")]
pub(crate) fn enter_later(task: tokio::task::Id, enter: fn(tokio::task::Id)) {
    fast(|fast| {
        // Polls nest only in unusual setups (a hooked runtime driven inside a task's poll);
        // the outer poll's context is entered first, so that they stack.
        fast.resolve();
        // Whatever the cache knows is about the frame current now, which this task must not
        // read: it reads its own, once entered.
        fast.bump();
        fast.pending.set(Some(Pending { task, enter }));
    });
}

/// The task whose context [`enter_later`] deferred and nothing has entered yet, if any.
#[cfg(feature = "hooks")]
pub(crate) fn pending_task() -> Option<tokio::task::Id> {
    fast(|fast| fast.pending.get().map(|pending| pending.task))
}

/// For the after-poll hook: whether `task`'s deferred enter never happened, which leaves
/// nothing to undo (it is forgotten).
#[cfg(feature = "hooks")]
pub(crate) fn cancel_later(task: tokio::task::Id) -> bool {
    fast(|fast| match fast.pending.get() {
        Some(pending) if pending.task == task => {
            fast.pending.set(None);
            true
        }
        _ => false,
    })
}

/// Makes `frame` the thread's current context for `task`, which need not be the task tokio
/// reports as running now (inside a poll hook it is not). `frame` receives what was current;
/// the result is its owner, for [`exit_owned`]. `None` if the thread's state is gone (then
/// nothing was swapped and `exit_owned` must not be called).
#[cfg(feature = "hooks")]
#[inline]
pub(crate) fn enter_owned(frame: &mut Frame, task: tokio::task::Id) -> Option<Task> {
    // A task's context swapped in here is swapped out by the after-poll hook; should a
    // thread end between the two, `TEARDOWN` must be there to drop it.
    if !may_write() {
        return None;
    }
    Some(swap(frame, Some(task)))
}

/// Marks `frame` as a context its task only inherited: it reads it, and every write to it is
/// refused ([`Unwritable::Inherited`]). Done once, when the hooks store a task's context.
#[cfg(feature = "hooks")]
pub(crate) fn make_read_only(frame: &mut Frame) {
    frame.id |= READ_ONLY;
}

/// Undoes [`enter_owned`]: `frame` (holding what was current before) becomes current again,
/// owned by `outer_owner`, and `frame` receives the task's bindings back.
#[cfg(feature = "hooks")]
#[inline]
pub(crate) fn exit_owned(frame: &mut Frame, outer_owner: Task) {
    swap(frame, outer_owner);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Context, ContextVar, Key, NoDefault};

    enum Name {}

    impl Key for Name {
        type Value = String;
        type Default = NoDefault;
    }

    static NAME: ContextVar<Name> = ContextVar::new("name");

    #[test]
    fn when_the_stamps_start_over_every_entry_is_forgotten_first() {
        let mut ctx = Context::new().with_value(&NAME, "a".to_string());
        ctx.run(|| {
            // Two changes before the stamps run out.
            fast(|fast| fast.stamp.set(0_u64.wrapping_sub(2 * STAMP_STEP)));
            assert_eq!(NAME.get().as_deref(), Some("a"));
            let token = NAME.set("b".to_string());
            assert_eq!(NAME.get().as_deref(), Some("b"));
            // The second change runs out of stamps: the table is cleared, stamps start over.
            NAME.reset(token).unwrap();
            assert_eq!(fast(|fast| fast.stamp.get()), STAMP_STEP);
            assert!(fast(|fast| fast
                .entries
                .iter()
                .all(|entry| entry.get().tag == 0)));
            assert_eq!(NAME.get().as_deref(), Some("a"));
            assert_eq!(NAME.get().as_deref(), Some("a"));
        });
        assert_eq!(NAME.get(), None);
    }

    #[test]
    fn a_key_read_as_unbound_reads_as_bound_once_set() {
        let mut ctx = Context::new();
        ctx.run(|| {
            assert_eq!(NAME.get(), None);
            assert_eq!(NAME.get(), None);
            let _token = NAME.set("now".to_string());
            assert_eq!(NAME.get().as_deref(), Some("now"));
        });
    }
}
