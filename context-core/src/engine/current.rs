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
// Without tokio a frame's owner is `()`: the owner checks compile to nothing.
#![cfg_attr(
    not(feature = "tokio"),
    allow(clippy::unit_cmp, clippy::let_unit_value, clippy::unit_arg)
)]

use std::cell::{Cell, RefCell};
use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::map::{CopyProof, Leaf, Map, fits_inline};

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

    /// The context's identity, assigned on first use: what tokens and guards record. Inlined:
    /// every `set` reads it, and only the first in a context takes a fresh one. Without the
    /// [`CARRIES`] bit, which changes with what the context carries, not with which it is.
    #[inline]
    pub(crate) fn id(&mut self) -> u64 {
        if self.id == 0 {
            self.id = fresh_id();
        }
        self.id & !CARRIES
    }

    /// Whether this is the context of identity `id` (from [`Frame::id`]).
    #[inline]
    pub(crate) fn is(&self, id: u64) -> bool {
        self.id & !CARRIES == id
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
        fast(Fast::forget_stamp);
        let mut frame = current(|current| {
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
        // thread-local's destructor: the panic hook prints it, and it goes no further. One
        // value at a time, each caught on its own: a second panic while a first unwinds
        // would abort the process too.
        let mut owned = Vec::new();
        frame.map.owned_keys(&mut owned);
        for key in owned {
            let value = frame.map.remove(key);
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(value)));
        }
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(frame)));
    }
}

// ---------------------------------------------------------------------------------------------
// The read cache.
//
// `get` is the operation a service performs most, so it has a fast path: a small per-thread
// table from a variable's key to where its value lives in the current frame, valid while the
// frame has not changed. Entries carry the thread's `stamp` of when they were made, and a read
// whose entry carries the thread's stamp now goes straight to the value, with no lookup in the
// map and no type check. This is `CPython`'s idea (a variable caches its last value with the
// version of the context it came from), with one table per thread instead of one slot per
// variable, so that it needs nothing from the variable's declaration.
//
// A stamp names one state of one frame on this thread: every entry made under it is about
// that state. Before every change to the current frame (a write, the thread's teardown) the
// thread is left with no stamp at all ([`NO_STAMP`], under which no entry is made or found),
// and the first read that misses then takes a stamp never used before (`Fast::bump`).
// Whatever makes another frame current leaves the thread with no stamp too, or with the stamp
// that frame had when it was last current here, if nothing can have changed it since: its
// entries hit again (`Fast::take_back`). Two things keep such a stamp:
// - a future's wrapper, with the stamp its context had when its last poll ended (a
//   [`LastPoll`]: the context is the wrapper's own, and nothing changes it between polls);
// - the guard of an entered context, with the stamp the caller's frame had when it was left
//   (that frame waits, borrowed by the guard, unchanged, until the guard puts it back); for a
//   poll's guard, that stamp waits in the wrapper's record while the poll runs (the guard
//   borrows the record for its whole life, and its `Drop` rewrites it with the stamp the
//   context leaves under).
// A stamp kept is only good on its own thread, in its own round of stamps (they start over
// after 2^30 new ones): each round has an epoch, a number no other round on any thread ever
// had (`fresh_epoch`), which its stamps carry; `Fast::take_back` takes back only a stamp of
// the thread's current epoch. New stamps come from a count that only goes up (`Fast::fresh`),
// never from a stamp taken back: a frame changed after its stamp was taken back gets a stamp
// no frame ever had.
//
// It lives in thread-locals without a destructor, which are reachable at every moment of the
// thread's life (teardown included) and cost no "is it still alive" check.
// ---------------------------------------------------------------------------------------------

/// How many keys the table holds; keys are dense, so `key % CACHE_SLOTS` spreads them.
const CACHE_SLOTS: usize = 64;

/// Where a key's value was in the current frame.
#[derive(Clone, Copy)]
struct Entry {
    /// The stamp the entry was made at with the key xored into its low 32 bits (the epoch,
    /// the same for every entry of the table and for the thread's stamp, when it has one),
    /// and [`UNBOUND`] if the key was unbound then: one compare checks all three.
    tag: u64,
    /// The value; null for an unbound key.
    value: *const (),
}

/// The tag of an empty entry, which no stamp and key make (stamps never have [`RAN_OUT`]).
const NO_ENTRY: u64 = u64::MAX;

/// The thread's stamp while it has none: entries are made only under a stamp with a count, so
/// a read under it finds no entry (even for key `0`: no entry has count `0`), and one that
/// misses takes a new stamp first (`fill`). Its epoch, `0`, is no thread's: a wrapper or
/// guard that kept it takes back nothing.
///
/// A stamp of count `0` in the thread's epoch ([`PollStart::without_stamp`]) is no stamp
/// either (no entry has count `0`, and `fill` takes a new stamp under it), but one that a
/// future's wrapper keeps as good: its next poll on this thread takes it back, as it would a
/// stamp with a count, which is what lets that poll skip every other check (see
/// [`LastPoll`]).
const NO_STAMP: u64 = 0;

/// One step of a stamp's count, which lives above the [`UNBOUND`] bit and the epoch and below
/// [`RAN_OUT`].
const STAMP_STEP: u64 = 1 << 33;

/// The top bit, which no stamp has: a count that reaches it has run out. (Tested as the sign,
/// which the addition that makes a new stamp sets: one instruction less than a compare.)
const RAN_OUT: u64 = 1 << 63;

/// The tag bit of an entry that found its key unbound.
const UNBOUND: u64 = 1 << 32;

/// The epoch of a thread that has made no stamp yet, or of every thread once all epochs are
/// given out. [`fill`] makes no entry under a stamp of it, so that such a stamp kept on one
/// thread and taken back on another finds nothing.
const NO_EPOCH: u32 = u32::MAX;

/// A number for this thread's new round of stamps that no other round, on any thread, ever
/// had; [`NO_EPOCH`] once all are given out (after 2^62 new stamps in the process).
fn fresh_epoch() -> u32 {
    static NEXT_EPOCH: AtomicU32 = AtomicU32::new(1);
    // Stops at `NO_EPOCH`: never gives out an epoch twice.
    NEXT_EPOCH
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
            (next < NO_EPOCH).then(|| next + 1)
        })
        .unwrap_or(NO_EPOCH)
}

/// The epoch a stamp belongs to: its low 32 bits.
#[allow(clippy::cast_possible_truncation)]
#[inline]
fn epoch_of(stamp: u64) -> u32 {
    stamp as u32
}

/// What the read cache knows of a frame that becomes current.
#[derive(Clone, Copy)]
enum Incoming {
    /// Nothing: the thread is left without a stamp.
    Unknown,
    /// The stamp it had when it was last current on this thread, unchanged since, if that is
    /// still good ([`Fast::take_back`] checks).
    Kept(u64),
    /// A stamp already checked ([`PollStart`]), or [`NO_STAMP`].
    Good(u64),
}

/// The task polling a future, found by [`LastPoll::start`].
#[derive(Clone, Copy)]
pub(crate) struct Poller(Task);

/// What a poll of a future's context finds before it enters it ([`LastPoll::start`]): the task
/// polling, and the stamp the context kept from its last poll, if that is still good here.
#[derive(Clone, Copy)]
pub(crate) struct PollStart {
    owner: Task,
    /// The stamp, if `good`.
    kept: u64,
    good: bool,
    /// The thread's epoch.
    epoch: u32,
}

impl PollStart {
    /// Whether the stamp kept is still good on this thread: made there, in the thread's
    /// current round of stamps (see [`Fast::take_back`]). Not for a future never polled here,
    /// or whose stamp was forgotten.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub(crate) fn is_good(&self) -> bool {
        self.good
    }

    /// The task polling.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub(crate) fn poller(&self) -> Poller {
        Poller(self.owner)
    }

    /// The same start without the stamp: the poll enters under none, that is under count `0`
    /// of the thread's epoch (see [`NO_STAMP`]). Unless the poll changes its context (a write),
    /// that is the stamp it leaves, which the next poll on this thread takes back as good.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub(crate) fn without_stamp(self) -> PollStart {
        // Without the features nothing is checked: plain `NO_STAMP`, one instruction less.
        let kept = if cfg!(any(feature = "tracing", feature = "opentelemetry")) {
            u64::from(self.epoch)
        } else {
            NO_STAMP
        };
        PollStart { kept, ..self }
    }
}

/// The stamp a future's context had on the thread that polled it last, when that poll ended
/// (see "The read cache"): kept by the future's wrapper, beside the context, and handed back at
/// the next poll, where it brings back the entries of the last poll if it is still good.
/// Only the wrapper that owns the context may keep it, and must forget it wherever the
/// context is replaced or changed between polls. While a poll runs, it holds the stamp of the
/// frame that poll swapped out instead (see [`Polled`]).
///
/// A context that carries a span or OpenTelemetry's context keeps none: its polls forget it.
/// So a poll that finds its stamp good ([`PollStart::is_good`]), which every poll of a context
/// that carries nothing does from its second on the same thread, needs no other check: the
/// check of the stamp is the only one (see `WithContext`'s poll).
#[derive(Debug, Default)]
pub(crate) struct LastPoll(u64);

impl LastPoll {
    /// Forgets the stamp: for a context replaced, or taken out.
    #[inline]
    pub(crate) fn forget(&mut self) {
        self.0 = NO_STAMP;
    }

    /// What a poll finds before it enters the context: see [`PollStart`]. (The task first:
    /// asking tokio is a call, after which the thread's state is read again.)
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub(crate) fn start(&self) -> PollStart {
        // A deferred enter of the runtime hooks first: it may run code that reads (a
        // subscriber's `on_enter` for the task's span), which may start a new round of stamps,
        // and the epoch checked here must be the one the poll enters under.
        fast(Fast::resolve);
        let owner = running_task();
        let kept = self.0;
        let epoch = fast(|fast| epoch_of(fast.fresh.get()));
        PollStart {
            owner,
            kept,
            good: epoch_of(kept) == epoch,
            epoch,
        }
    }
}

struct Fast {
    /// Names the state of the thread's current frame, or [`NO_STAMP`]: see "The read cache".
    /// A count in bits 33 to 62 (never 0 but in `NO_STAMP`), the epoch of the round it was
    /// made in (see [`fresh_epoch`]) in the low 32.
    stamp: Cell<u64>,
    /// The last stamp [`Fast::bump`] gave out: its count only goes up, and its epoch is the
    /// thread's current one. Starts at the last count, so that the thread's first new stamp
    /// starts a round ([`Fast::wrap`]), which gives it an epoch.
    fresh: Cell<u64>,
    /// The task that made the current frame current: `NO_TASK` for the thread's own context
    /// and for a context entered outside any task. Only code of that task sees the frame.
    /// Any other task polled meanwhile on this thread (a task spawned without a context,
    /// polled by a runtime driven inside `Context::run`, or by a `LocalSet` inside a
    /// context's future) sees an empty context and cannot write.
    owner: Cell<Task>,
    /// The value a `get` is cloning out of the current frame right now (null when none is):
    /// the frame that holds it must not be written meanwhile (`refuse_while_reading`).
    reading: Cell<*const ()>,
    entries: [Cell<Entry>; CACHE_SLOTS],
    /// For each entry, whether the value it points to is held in an `Arc` (a value stored
    /// shared), not in place in a node: what [`lend`] needs to hold it. Written with the entry
    /// (`fill`, `prime_reads`), from the binding's own `Value`; read by `lend` only.
    shared: [Cell<bool>; CACHE_SLOTS],
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
            stamp: Cell::new(NO_STAMP),
            fresh: Cell::new((RAN_OUT - STAMP_STEP) | NO_EPOCH as u64),
            owner: Cell::new(NO_TASK),
            reading: Cell::new(std::ptr::null()),
            entries: [const {
                Cell::new(Entry { tag: NO_ENTRY, value: std::ptr::null() })
            }; CACHE_SLOTS],
            shared: [const { Cell::new(false) }; CACHE_SLOTS],
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
    /// cannot happen while an enter waits (`enter_later` leaves the thread without a stamp).
    #[inline]
    #[cfg_attr(not(feature = "hooks"), allow(clippy::unused_self))]
    fn resolve(&self) {
        #[cfg(feature = "hooks")]
        if let Some(pending) = self.pending.take() {
            (pending.enter)(pending.task);
        }
    }

    /// Whether the thread has a stamp that entries may be made under: one with a count, not
    /// [`NO_STAMP`] nor count `0` of an epoch, which a poll may enter under and which any
    /// other poll on this thread may enter under too. No entry is ever made without one.
    #[inline]
    fn has_stamp(&self) -> bool {
        self.stamp.get() >= STAMP_STEP
    }

    /// Invalidates every entry of the read cache: the thread takes a stamp never used before,
    /// for the current frame as it is about to be.
    #[inline]
    fn bump(&self) {
        let next = self.fresh.get() + STAMP_STEP;
        if next & RAN_OUT != 0 {
            self.wrap();
        } else {
            self.fresh.set(next);
            self.stamp.set(next);
        }
    }

    /// After 2^30 new stamps the count starts over: forget every entry first, so that none
    /// made at an old stamp can match a new one, and start a new epoch, so that no stamp kept
    /// from the old round is taken back.
    #[cold]
    fn wrap(&self) {
        for entry in &self.entries {
            entry.set(Entry {
                tag: NO_ENTRY,
                value: std::ptr::null(),
            });
        }
        let start = STAMP_STEP | u64::from(fresh_epoch());
        self.fresh.set(start);
        self.stamp.set(start);
    }

    /// Makes `kept` the thread's stamp again if it is of the thread's current epoch, else
    /// leaves the thread with [`NO_STAMP`]. `kept` must be the stamp that the frame now
    /// current had when it was last current on this thread, with the frame unchanged since
    /// (see "The read cache"), or `NO_STAMP`.
    #[inline]
    fn take_back(&self, kept: u64) {
        let good = epoch_of(kept) == epoch_of(self.fresh.get());
        self.stamp.set(if good { kept } else { NO_STAMP });
    }

    /// Leaves the thread without a stamp, which invalidates every entry of the read cache:
    /// before every change to the current frame, and where another frame becomes current.
    #[inline]
    fn forget_stamp(&self) {
        self.stamp.set(NO_STAMP);
    }

    /// The thread's stamp for a frame that becomes current: see [`Incoming`].
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn take_incoming(&self, incoming: Incoming) {
        match incoming {
            Incoming::Unknown => self.forget_stamp(),
            Incoming::Kept(kept) => self.take_back(kept),
            Incoming::Good(kept) => self.stamp.set(kept),
        }
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

    /// Makes the entry of `key` point to `value`, of a binding whose value is stored shared
    /// (in an `Arc`) or not, under `tag`.
    #[inline]
    fn record(&self, key: u32, tag: u64, value: *const (), shared: bool) {
        self.entry(key).set(Entry { tag, value });
        self.shared[key as usize % CACHE_SLOTS].set(shared);
    }
}

/// The one way to write to the frame while it is being read: `get` clones the value out of the
/// frame without a reference count, and that `Clone` impl sets or resets a variable.
const REENTERED: &str = "contextvars: a context variable was set or reset from a `Clone` impl, \
     in a context holding the value that `get` was cloning; read such a value with `with` \
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
    copy: Option<CopyProof<T>>,
) -> Option<T> {
    fast(|fast| {
        let value = found::<T>(fast, key, assign_key)?;
        // A `Copy` value is copied bit for bit, which runs no code: nothing can write
        // meanwhile, so there is no `reading` to set.
        let _reading = copy.is_none().then(|| Reading::begin(fast, value));
        // SAFETY: `value` points to a live `T`, and stays valid while it is copied or `clone`
        // runs:
        // - It was taken, with the stamp the entry's tag carries, from the value of a leaf of
        //   the thread's current frame: by `fill`, after checking that the value is a `T`, or
        //   by `prime_reads`, for every leaf of the frame's root. Every key belongs to one
        //   variable (`ContextVar::key` never hands one out twice), and every leaf of a key is
        //   made by that variable from a value of its type (`ContextVar::leaf`, the token of
        //   `ContextVar::set`, the metadata's own variable), so the leaf of this key holds a
        //   `T`, the type of every reader of the key.
        // - The thread's stamp is the entry's, so the frame current now is the one current
        //   when the entry was made, unchanged (see "The read cache"). Entries are made only
        //   under a stamp with a count (`fill`), which `Fast::bump` gives out once: the count
        //   only goes up, and `Fast::wrap` clears the table and starts a new epoch before it
        //   starts over. Every change to the thread's current frame (a swap in `Entered`,
        //   `Polled` and the hooks, a write through `write`, `drop_bindings`, the thread's
        //   teardown in `Teardown`'s `Drop`) first leaves the thread with `NO_STAMP`, under
        //   which no entry is found (nor under count 0 of the thread's epoch, which a `Polled`
        //   guard may enter under: no entry has count 0, and `fill` takes a new stamp under
        //   it), or, for a swap, with the stamp the incoming frame had when it was last
        //   current on this thread, in this epoch (`Fast::take_back`, or for `Polled` the same
        //   check made just before the swap, `LastPoll::start`), if it has not changed since:
        //   a `Polled` guard takes back its future's stamp of its last poll (its wrapper's
        //   `LastPoll`, forgotten wherever the context is replaced or taken out; nothing else
        //   changes it between polls), and a guard takes back, when it leaves, the stamp the
        //   caller's frame had when it was entered (that frame waited, borrowed by the guard;
        //   for `Polled`, that stamp waits in the wrapper's `LastPoll`, which the guard
        //   borrows mutably for its whole life, and its `Drop` rewrites with the stamp the
        //   context leaves under). A stamp kept on another thread, or in an earlier round of
        //   this one, carries another epoch; and no entry is made under `NO_EPOCH`, which two
        //   threads may share. Nothing outside this file reaches `CURRENT` (which has no
        //   destructor of its own: its frame is only ever dropped by `Teardown`). A swap moves
        //   the frame's `Map`, a pointer to the root: the nodes and values stay where they
        //   are.
        // - The frame holds its map's root, the root holds the leaf, the leaf holds the value:
        //   in place (a small `Copy` value, inside its node's slots, which only a write to that
        //   node moves) or in an `Arc`. Nodes shared with other maps are never written (writes
        //   go through `Arc::make_mut`, which copies a shared node), and this frame's own nodes
        //   are written only through `write`. So the value is alive and unmoved.
        // - While `clone` runs, `reading` holds `value`, and a write (`write_with`, which calls
        //   `refuse_while_reading`) to a frame that holds it panics before it changes
        //   anything: a `Clone` impl that sets or resets a variable of this frame cannot free
        //   the value it is being cloned from. Entering a context from it is allowed: the swap
        //   moves this frame, unchanged, into the entered context's storage, which stays
        //   borrowed until the swap back; writes to the entered frame (which holds `value`
        //   only through nodes or values it shares, or not at all) are allowed where it does
        //   not hold `value`, and cannot free it: this frame still holds it, and a write
        //   copies a shared node before changing it. `drop_bindings` only ever empties a
        //   context just entered, never this frame.
        let value = unsafe { &*value.cast::<T>() };
        Some(match copy {
            Some(proof) => proof.copy(value),
            None => value.clone(),
        })
    })
}

/// Where `key`'s value, a `T`, is in the context visible here: through the read cache, or
/// looked up and recorded there. `None` where it is unbound or not visible. What the pointer
/// points to is live while the thread's stamp stays the one it has now (see "The read cache").
#[allow(clippy::inline_always)]
#[inline(always)]
fn found<T: Send + Sync + 'static>(
    fast: &Fast,
    key: u32,
    assign_key: impl FnOnce() -> u32,
) -> Option<*const ()> {
    let tag = fast.stamp.get() ^ u64::from(key);
    let entry = fast.entry(key).get();
    let value = if entry.tag == tag {
        entry.value
    } else if entry.tag == tag | UNBOUND {
        return None;
    } else {
        fill::<T>(fast, assign_key())?
    };
    fast.visible().then_some(value)
}

/// What `ContextVar::with` calls with a value: `f(Some(value))`, or `f(value)` for a variable
/// with a default.
pub(crate) trait Lend<T> {
    type Output;
    fn lend(self, value: &T) -> Self::Output;
}

/// What [`lend`] did with `L`.
pub(crate) enum Lent<R, L> {
    /// Lent the value; the result.
    Done(R),
    /// The key is unbound here (or the context is not visible): `L` back.
    Unbound(L),
    /// The value is stored in place, and no `CopyProof` came to copy it out with: `L` back,
    /// for the caller to lend a clone of the binding's `Value` instead.
    InPlace(L),
}

/// Lends `key`'s value, a `T`, in the context visible here, found as [`get_cloned`] finds it,
/// to `lender`, which runs with the thread state released, so it may read and set variables.
/// The value is held apart from the context meanwhile: by one more count of its `Arc` where it
/// is stored shared, else (stored in place, so small) copied bit for bit where `copy` proves
/// `T` `Copy`. Which of the two is the binding's own `Value`'s to say, as the read cache
/// recorded it, not `copy`'s: a `Key` may hand a proof one time and none the next.
#[allow(clippy::inline_always)]
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn lend<T: Send + Sync + 'static, L: Lend<T>>(
    key: u32,
    assign_key: impl FnOnce() -> u32,
    copy: Option<CopyProof<T>>,
    lender: L,
) -> Lent<L::Output, L> {
    let found = fast(|fast| {
        let value = found::<T>(fast, key, assign_key)?.cast::<T>();
        let shared = fast.shared[key as usize % CACHE_SLOTS].get();
        Some(if shared {
            // SAFETY: `value` points to a live `T`, for the reasons given in `get_cloned`,
            // that the binding's `Value` stores shared: `fill` and `prime_reads` record
            // `shared` from that `Value` (`!is_inline()`) with the entry, and a shared `Value`
            // is only ever made by `Value::new` as `Arc::new` of a `T` (then seen as
            // `Arc<dyn Any + Send + Sync>`, the same allocation), whose `Arc::as_ptr` is
            // `value`. So `value` is what `Arc::into_raw` would give, the count is raised
            // while the binding's own is alive, and `from_raw` takes the count raised here.
            Ok(unsafe {
                Arc::increment_strong_count(value);
                Arc::from_raw(value)
            })
        } else {
            Err(value)
        })
    });
    match found {
        None => Lent::Unbound(lender),
        Some(Ok(held)) => Lent::Done(lender.lend(&held)),
        // Nothing has run since `found`: the value is still where the entry says. (A `T` too
        // large to be stored in place never comes here; the test makes that plain to the
        // compiler, which then keeps no room for a copy of it.)
        Some(Err(value)) => match copy {
            Some(proof) if fits_inline::<T>() => Lent::Done(lend_copy(proof, value, lender)),
            _ => Lent::InPlace(lender),
        },
    }
}

/// Lends a copy of the `T` at `value`, a value stored in place (two words at most). A function
/// of its own, called only for such a `T`: a build that keeps unused stack slots (a debug
/// build) then keeps no room for a large `T` in every `with`.
#[inline]
#[allow(unsafe_code)]
fn lend_copy<T, L: Lend<T>>(proof: CopyProof<T>, value: *const T, lender: L) -> L::Output {
    // SAFETY: `value` points to a live `T`, for the reasons given in `get_cloned`: the caller
    // found it through the read cache and has run nothing since, and nothing runs while it is
    // copied.
    let copied = proof.copy(unsafe { &*value });
    lender.lend(&copied)
}

/// Looks `key` up in the current frame and records where its value is (or that it is
/// unbound), for this stamp. `None` where it is unbound.
#[cold]
#[inline(never)]
fn fill<T: Send + Sync + 'static>(fast: &Fast, key: u32) -> Option<*const ()> {
    let (value, shared) = current(|current| {
        let current = current.try_borrow().unwrap_or_else(|_| reentered());
        current
            .frame
            .map
            .get(key)
            .map_or((std::ptr::null(), false), |leaf| {
                assert!(
                    leaf.value.as_any().is::<T>(),
                    "contextvars: a binding of `{}` holds another type",
                    std::any::type_name::<T>()
                );
                (leaf.value.as_ptr(), !leaf.value.is_inline())
            })
    });
    // Read after the lookup: a deferred enter carried out on the way (`current`) leaves the
    // thread without a stamp. (Count `0` of the thread's epoch is none either: see
    // `NO_STAMP`.)
    if !fast.has_stamp() {
        // The first read since the frame became current or changed: a stamp for its state.
        fast.bump();
    }
    // Under `NO_EPOCH` (every epoch given out) no entry is made.
    let stamp = fast.stamp.get();
    if epoch_of(stamp) != NO_EPOCH {
        let unbound = if value.is_null() { UNBOUND } else { 0 };
        fast.record(key, (stamp ^ u64::from(key)) | unbound, value, shared);
    }
    (!value.is_null()).then_some(value)
}

/// Records in the read cache where the value of every binding in the root of the current frame
/// is, under the thread's stamp (a new one if it has none), as `fill` does for one: reads of
/// them that follow, with the frame unchanged, hit at once instead of each looking its binding
/// up first. For a small frame that has just been written to and is about to be read: a
/// request's context, once the layer's hook has set its values and before the handler reads
/// them. A frame whose root holds more than a few slots is left as it is.
#[cfg_attr(not(feature = "tower"), allow(dead_code))]
fn prime_reads() {
    /// The most slots a root may have for its leaves to be recorded.
    const MOST: usize = 8;
    fast(|fast| {
        current(|current| {
            let Ok(current) = current.try_borrow() else {
                return;
            };
            let Some(leaves) = current.frame.map.root_leaves(MOST) else {
                return;
            };
            if !fast.has_stamp() {
                fast.bump();
            }
            // Under `NO_EPOCH` (every epoch given out) no entry is made.
            let stamp = fast.stamp.get();
            if epoch_of(stamp) == NO_EPOCH {
                return;
            }
            for leaf in leaves {
                let tag = stamp ^ u64::from(leaf.key);
                fast.record(leaf.key, tag, leaf.value.as_ptr(), !leaf.value.is_inline());
            }
        });
    });
}

/// Sets `reading` to the value being cloned for as long as it lives, then puts back what it
/// was (a `Clone` impl may read too), also when `clone` panics.
struct Reading<'a> {
    fast: &'a Fast,
    outer: *const (),
}

impl<'a> Reading<'a> {
    #[inline]
    fn begin(fast: &'a Fast, value: *const ()) -> Self {
        let outer = fast.reading.replace(value);
        Reading { fast, outer }
    }
}

impl Drop for Reading<'_> {
    #[inline]
    fn drop(&mut self) {
        self.fast.reading.set(self.outer);
    }
}

/// Called before a binding of the thread's current frame is added, replaced or removed while
/// `get` clones a value (`reading`: the `Clone` impl sets a variable, or a `Drop` it runs
/// does): panics, changing nothing, where the frame current now holds that value, whose
/// binding the write could replace or remove and so free it. A frame that does not hold it
/// is another context's, entered from the `Clone` impl (a fresh one, or one being dropped):
/// the frame the value is read from waits, unchanged, while another is current, and keeps the
/// value alive; a write elsewhere copies any node it shares with that frame before changing
/// it. Only the innermost `get` is checked: the frames of the outer ones wait too, while the
/// innermost's is current. A write that would be refused anyway (no context visible to this
/// task, or one it only inherited) is left to fail with its own error.
#[cold]
#[inline(never)]
fn refuse_while_reading() {
    let value = fast(|fast| fast.reading.get());
    let holds = CURRENT.try_with(|current| {
        current.try_borrow().map_or(true, |current| {
            fast(Fast::visible)
                && current.frame.id & READ_ONLY == 0
                && current.frame.map.holds_value(value)
        })
    });
    if holds != Ok(false) {
        reentered();
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
            fast.forget_stamp();
            f(&mut current.frame, fast)
        })
    })
}

/// Swaps `frame` in, in place of the thread's current frame, for `owner`, under the stamp
/// `incoming` says. Returns the owner and the
/// stamp of the frame swapped out (into `frame`), for [`swap_out`].
///
/// Unlike a write, a swap is allowed while `get` clones a value (a `Clone` impl may run code
/// in a context of its own): the frame that holds the value is moved, unchanged, into the
/// storage of the entered context, which stays borrowed until the swap back.
#[allow(clippy::inline_always)]
#[inline(always)]
fn swap_in(frame: &mut Frame, owner: Task, incoming: Incoming) -> (Task, u64) {
    swap_frames(frame);
    fast(|fast| {
        let outer_owner = fast.owner.replace(owner);
        let outer_stamp = fast.stamp.get();
        fast.take_incoming(incoming);
        (outer_owner, outer_stamp)
    })
}

/// Undoes [`swap_in`]: swaps the frame in `frame` back in, for `owner`, under the stamp
/// `incoming` says. Returns the stamp of the frame swapped out.
#[allow(clippy::inline_always)]
#[inline(always)]
fn swap_out(frame: &mut Frame, owner: Task, incoming: Incoming) -> u64 {
    swap_frames_back(frame);
    fast(|fast| {
        let left = fast.stamp.get();
        fast.take_incoming(incoming);
        fast.owner.set(owner);
        left
    })
}

/// Swaps `frame` with the thread's current frame. The caller sets the stamp right after, with
/// nothing run in between.
///
/// Field by field: a frame just made (`Context::current()`, then `run`) was written a word at
/// a time, and a swap of the whole frame read it back with one 16-byte load, which the
/// processor cannot forward from two 8-byte stores still in flight: it waited for them to
/// reach the cache. Measured on one commit built both ways: snapshot-then-run 16.2 ns to 6.2 ns,
/// `run` 5.7 ns to 4.4 ns, a poll 6.0 ns and 38 instructions to 2.5 ns and 30, for 4 more
/// instructions in `run`; a poll that reads went from 10.4 ns to 14.5 (with 4 fewer
/// instructions) and `set` + `reset`, which swaps nothing, from 26 ns to 27–31, unexplained
/// without the processor's counters. (Leaving a context, the compiler may still fuse the
/// two words into one 16-byte move; [`swap_frames_back`] keeps it from doing so where that
/// read back what the entry had just written a word at a time. An atomic id or a compiler
/// fence between the fields stops it too, but costs a poll 20 instructions more.)
#[allow(clippy::inline_always)]
#[inline(always)]
fn swap_frames(frame: &mut Frame) {
    current(|current| {
        let mut current = current.try_borrow_mut().unwrap_or_else(|_| reentered());
        // Every field named: a field added to `Frame` must be added here.
        let Frame { map, id } = &mut current.frame;
        std::mem::swap(id, &mut frame.id);
        std::mem::swap(map, &mut frame.map);
    });
}

/// [`swap_frames`], leaving a context: the identity of the frame coming back is read before
/// the borrow's check, outside the closure that swaps, so that the compiler does not fuse the
/// two words, which entering wrote one at a time, into one 16-byte load that waits for those
/// stores (see [`swap_frames`]). Measured on a `#[preserve_context]` call: 12.4 ns against
/// 20.6 with the fused load, at 139 instructions against 126.
#[allow(clippy::inline_always)]
#[inline(always)]
fn swap_frames_back(frame: &mut Frame) {
    let incoming_id = frame.id;
    current(|current| {
        let mut current = current.try_borrow_mut().unwrap_or_else(|_| reentered());
        // Every field named: a field added to `Frame` must be added here.
        let Frame { map, id } = &mut current.frame;
        frame.id = std::mem::replace(id, incoming_id);
        std::mem::swap(map, &mut frame.map);
    });
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
        if fast(|fast| !fast.reading.get().is_null()) {
            refuse_while_reading();
        }
        let mut current = current.try_borrow_mut().unwrap_or_else(|_| reentered());
        fast(|fast| {
            if !fast.visible() {
                Err((Unwritable::NoContext, owned))
            } else if current.frame.id & READ_ONLY != 0 {
                Err((Unwritable::Inherited, owned))
            } else {
                // Only a write that happens invalidates the read cache: the thread is left
                // without a stamp, and the next read takes a fresh one.
                fast.forget_stamp();
                Ok(f(&mut current.frame, owned))
            }
        })
    })
}

/// Drops the bindings of `frame`, a context's own (its root no other context shares), inside
/// that context ([`drop_bindings`]), where a value may have a `Drop` to run (bindings whose
/// values cannot run code as they go are released at once by the caller, without entering
/// the context: `Map::release_if_no_drop`). Writable for the drops even where its task only
/// inherited it (the runtime hooks' context of a plain task that outlived the values'
/// owner): a `Drop` may set, as anywhere else, and what it sets goes with the context, whose
/// nodes shared with others are copied before any write.
///
/// A context that carries a span drops inside the span too, where a value's own `Drop` is
/// to run (not for a snapshot that only shares its values: entering a span runs the
/// subscriber's code). The span is left before the context, as the leaving of any context
/// leaves its span first, so that it closes inside the context where this was its last
/// handle; and so it is where a value's `Drop` panics, whose panic is raised once both are
/// left.
#[cold]
#[inline(never)]
pub(crate) fn drop_values_inside(frame: &mut Frame) {
    // Only the hooks make a frame read-only.
    #[cfg(feature = "hooks")]
    {
        frame.id &= !READ_ONLY;
    }
    let (in_span, span_panic) = if frame.carries() && frame.map.drops_code() {
        enter_span_for_drop(frame)
    } else {
        (None, None)
    };
    let entered = Entered::new(frame);
    let value_panic = drop_bindings();
    drop(in_span);
    drop(entered);
    if let Some(payload) = span_panic.or(value_panic) {
        if !std::thread::panicking() {
            std::panic::resume_unwind(payload);
        }
    }
}

/// Whether this thread can enter a context now: its state is not in use (a write or a read
/// under way, whose code let go of a node) and its locals are not being destroyed.
#[cold]
pub(crate) fn can_enter() -> bool {
    may_write() && CURRENT.try_with(|current| current.try_borrow_mut().is_ok()) == Ok(true)
}

/// Drops the bindings of `map`, whose root nobody else holds, inside a context of their own
/// ([`drop_values_inside`]); the caller has checked [`can_enter`].
#[cold]
#[inline(never)]
pub(crate) fn drop_orphaned(map: Map) {
    let mut frame = Frame::carrying(map);
    drop_values_inside(&mut frame);
}

/// The span `frame` carries, entered for [`drop_values_inside`] (see
/// `Carried::enter_span_for_drop`), or the subscriber's panic, to raise once the values are
/// dropped.
#[cold]
#[inline(never)]
fn enter_span_for_drop(
    frame: &Frame,
) -> (
    Option<crate::carried::DropInSpan>,
    Option<Box<dyn std::any::Any + Send>>,
) {
    let enter = std::panic::AssertUnwindSafe(|| frame.map.carried().enter_span_for_drop());
    match std::panic::catch_unwind(enter) {
        Ok(in_span) => (in_span, None),
        Err(payload) => (None, Some(payload)),
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
/// first panic is returned once all are gone, for the caller to raise when it has left the
/// context (unless the thread is already unwinding from another panic, where a second one
/// would abort the process: the panic hook has printed it, and it goes no further).
///
/// The caller has just entered the context whose values are to go, so the frame is visible.
#[must_use = "the first panic of a value's `Drop`, to raise"]
pub(crate) fn drop_bindings() -> Option<Box<dyn std::any::Any + Send>> {
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
            // Each value's panic caught on its own: a value another context shares may be
            // dropped here after all, where that context let go of it at the same moment.
            shared.release_caught(&mut first_panic);
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
    first_panic
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

/// Runs `drop` (which drops values), keeping the first panic of a `Drop` in `first_panic`;
/// says whether it panicked.
#[inline]
pub(crate) fn catch_drop_panic(
    drop: impl FnOnce(),
    first_panic: &mut Option<Box<dyn std::any::Any + Send>>,
) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(drop)) {
        Ok(()) => false,
        Err(payload) => {
            first_panic.get_or_insert(payload);
            true
        }
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
/// was current before, with the read cache's entries for it.
pub(crate) struct Entered<'a> {
    frame: &'a mut Frame,
    /// The owner of what was current before.
    outer_owner: Task,
    /// The stamp of what was current before, taken back when it comes back: meanwhile it
    /// waits in `frame`, unchanged.
    outer_stamp: u64,
}

impl<'a> Entered<'a> {
    #[inline]
    pub(crate) fn new(frame: &'a mut Frame) -> Self {
        Entered::for_task(frame, running_task())
    }

    /// [`Entered::new`] for a poll that found the task polling already ([`PollStart::poller`]).
    #[inline]
    pub(crate) fn for_poll(frame: &'a mut Frame, poller: Poller) -> Self {
        Entered::for_task(frame, poller.0)
    }

    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn for_task(frame: &'a mut Frame, owner: Task) -> Self {
        let (outer_owner, outer_stamp) = swap_in(frame, owner, Incoming::Unknown);
        Entered {
            frame,
            outer_owner,
            outer_stamp,
        }
    }
}

impl Drop for Entered<'_> {
    #[inline]
    fn drop(&mut self) {
        swap_out(
            self.frame,
            self.outer_owner,
            Incoming::Kept(self.outer_stamp),
        );
    }
}

/// Where a future's wrapper keeps its context between polls: the frame, and the [`LastPoll`]
/// that is its record. A [`Polled`] guard reaches both through one reference: it is made on
/// every poll, and each field it holds is one more store there (a guard that lives across a
/// call that may unwind is kept in memory, for the unwinding path).
///
/// `parts` must return the same two places on every call, and run nothing else: the guard asks
/// for them when it enters and again when it leaves.
pub(crate) trait PollSlot {
    fn parts(&mut self) -> (&mut Frame, &mut LastPoll);
}

/// [`Entered`] for one poll of a future's context: entered under the stamp it had when its
/// last poll ended on this thread, if it is still good, so that the read cache's entries of
/// that poll hit again; left, it records its stamp in its `LastPoll` for the next poll.
/// Meanwhile that record holds the stamp of the frame swapped out, given back on leaving.
pub(crate) struct Polled<'a, S: PollSlot> {
    slot: &'a mut S,
    outer_owner: Task,
}

impl<'a, S: PollSlot> Polled<'a, S> {
    /// The slot's `LastPoll` must be the record of its frame, and `start` what
    /// [`LastPoll::start`] found in it just now, [`without_stamp`](PollStart::without_stamp)
    /// unless [`is_good`](PollStart::is_good).
    #[inline]
    pub(crate) fn new(slot: &'a mut S, start: PollStart) -> Self {
        debug_assert!(start.good || start.kept < STAMP_STEP);
        let (frame, last) = slot.parts();
        let (outer_owner, outer_stamp) = swap_in(frame, start.owner, Incoming::Good(start.kept));
        // Read by `start` already; rewritten when the guard leaves.
        last.0 = outer_stamp;
        Polled { slot, outer_owner }
    }

    /// This guard, recording every binding of a small context in the read cache when it
    /// leaves, before the context is swapped out ([`prime_reads`]), so that the stamp it leaves
    /// in its `LastPoll` is the one the record was made under: for a request's `call`, whose
    /// response future's first poll then reads what the hook and the inner services' calls set
    /// without looking it up. A guard rather than a call after the code it wraps, so that a
    /// value that code returns (the call's future) is written once, where it goes.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn primed_on_leaving(self) -> PrimedOnLeaving<'a, S> {
        PrimedOnLeaving(self)
    }
}

/// See [`Polled::primed_on_leaving`]. Its `Drop` runs before the `Polled` inside it leaves.
pub(crate) struct PrimedOnLeaving<'a, S: PollSlot>(#[allow(dead_code)] Polled<'a, S>);

impl<S: PollSlot> Drop for PrimedOnLeaving<'_, S> {
    fn drop(&mut self) {
        prime_reads();
    }
}

impl<S: PollSlot> Drop for Polled<'_, S> {
    #[inline]
    fn drop(&mut self) {
        let (frame, last) = self.slot.parts();
        last.0 = swap_out(frame, self.outer_owner, Incoming::Kept(last.0));
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
        fast.forget_stamp();
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
    Some(swap_in(frame, Some(task), Incoming::Unknown).0)
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
    swap_out(frame, outer_owner, Incoming::Unknown);
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::{Pin, pin};
    use std::task::{Context as TaskContext, Poll, Waker};

    use super::*;
    use crate::future::WithContext;
    use crate::{Context, ContextVar, FutureExt, Key, NoDefault};

    enum Name {}

    impl Key for Name {
        type Value = String;
        type Default = NoDefault;
    }

    static NAME: ContextVar<Name> = ContextVar::new("name");

    /// Variables enough that some share a cache entry.
    static SHARERS: [ContextVar<Name>; 130] = [const { ContextVar::new("sharer") }; 130];

    /// The thread's stamp now.
    fn stamp() -> u64 {
        fast(|fast| fast.stamp.get())
    }

    /// The count of a stamp, without its epoch.
    fn count_of(stamp: u64) -> u64 {
        stamp >> 33
    }

    /// Makes the thread run out of stamps in `new_stamps` new stamps.
    fn run_out_in(new_stamps: u64) {
        fast(|fast| {
            let epoch = u64::from(epoch_of(fast.fresh.get()));
            fast.fresh.set((RAN_OUT - new_stamps * STAMP_STEP) | epoch);
        });
    }

    /// Moves the thread into the round of stamps `epoch` as `Fast::wrap` does, but without
    /// forgetting the entries, at `count`: as if another thread had made them (or this one in
    /// another round) at the same count.
    fn pretend_round(epoch: u32, count: u64) {
        fast(|fast| fast.fresh.set((count * STAMP_STEP) | u64::from(epoch)));
    }

    /// Two variables whose values share a cache entry, and what their keys differ by.
    fn two_sharing_an_entry() -> (&'static ContextVar<Name>, &'static ContextVar<Name>, u32) {
        for (i, first) in SHARERS.iter().enumerate() {
            for second in &SHARERS[i + 1..] {
                let (a, b) = (first.key(), second.key());
                if a as usize % CACHE_SLOTS == b as usize % CACHE_SLOTS {
                    return (first, second, a ^ b);
                }
            }
        }
        unreachable!("130 keys in 64 entries: two share one")
    }

    /// Polls `future` once, with a waker that does nothing.
    fn poll_once<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut TaskContext::from_waker(Waker::noop()))
    }

    /// A future that, at each poll, reads `var` with the thread's stamp before and after the
    /// read into `seen`; never ready.
    fn reader<'a>(
        var: &'static ContextVar<Name>,
        seen: &'a std::cell::RefCell<Vec<(u64, Option<String>, u64)>>,
    ) -> impl Future<Output = ()> + 'a {
        std::future::poll_fn(move |_| {
            let before = stamp();
            let value = var.get();
            seen.borrow_mut().push((before, value, stamp()));
            Poll::Pending
        })
    }

    #[test]
    fn when_the_stamps_start_over_every_entry_is_forgotten_first() {
        let mut ctx = Context::new().with_value(&NAME, "a".to_string());
        ctx.run(|| {
            // Two new stamps before they run out.
            run_out_in(2);
            assert_eq!(NAME.get().as_deref(), Some("a"));
            let epoch = epoch_of(stamp());
            let token = NAME.set("b".to_string());
            // The read after the write takes the second one, which runs out: the table is
            // cleared, and stamps start over, in a new epoch.
            assert_eq!(NAME.get().as_deref(), Some("b"));
            assert_eq!(count_of(stamp()), 1);
            assert_ne!(epoch_of(stamp()), epoch);
            let slot = NAME.key() as usize % CACHE_SLOTS;
            assert!(fast(|fast| {
                fast.entries
                    .iter()
                    .enumerate()
                    .all(|(i, entry)| i == slot || entry.get().tag == NO_ENTRY)
            }));
            NAME.reset(token).unwrap();
            assert_eq!(NAME.get().as_deref(), Some("a"));
            assert_eq!(NAME.get().as_deref(), Some("a"));
        });
        assert_eq!(NAME.get(), None);
    }

    #[test]
    fn a_future_polled_again_unchanged_reads_the_entries_of_its_last_poll() {
        let seen = std::cell::RefCell::new(Vec::new());
        let ctx = Context::new().with_value(&NAME, "a".to_string());
        let mut future = pin!(reader(&NAME, &seen).with_context(ctx));
        let _own = NAME.set("own".to_string());
        assert_eq!(NAME.get().as_deref(), Some("own"));
        let own = stamp();
        for _ in 0..3 {
            assert!(poll_once(future.as_mut()).is_pending());
            // The thread's own context takes its stamp back too.
            assert_eq!(stamp(), own);
            assert_eq!(NAME.get().as_deref(), Some("own"));
        }
        let seen = seen.take();
        // The first poll, under no stamp (count 0), took a stamp for its read; the others
        // read under it, with no new one.
        let first = seen[0].2;
        assert_eq!(count_of(seen[0].0), 0);
        assert_ne!(count_of(first), 0);
        assert_eq!(
            seen,
            [
                (seen[0].0, Some("a".to_string()), first),
                (first, Some("a".to_string()), first),
                (first, Some("a".to_string()), first),
            ]
        );
    }

    #[test]
    fn futures_that_read_nothing_at_their_last_poll_read_their_own_values_at_the_next() {
        // Their first polls read nothing: they keep no stamp with a count (with the features,
        // count 0 of the thread's epoch, which their next polls take back). At the next polls
        // each reads the same variable: neither may find the entry the other made.
        fn reading_from_the_second_poll(
            expected: &'static str,
        ) -> WithContext<impl Future<Output = ()>> {
            let mut poll = 0;
            let future = std::future::poll_fn(move |_| {
                poll += 1;
                if poll > 1 {
                    assert_eq!(NAME.get().as_deref(), Some(expected), "poll {poll}");
                    assert_ne!(count_of(stamp()), 0, "read under a stamp with a count");
                }
                Poll::<()>::Pending
            });
            future.with_context(Context::new().with_value(&NAME, expected.to_string()))
        }
        let mut a = pin!(reading_from_the_second_poll("a's"));
        let mut b = pin!(reading_from_the_second_poll("b's"));
        for _ in 0..3 {
            assert!(poll_once(a.as_mut()).is_pending());
            assert!(poll_once(b.as_mut()).is_pending());
            assert_eq!(NAME.get(), None);
        }
    }

    #[test]
    fn a_futures_stamp_of_another_round_is_never_taken_back() {
        // The future's stamp, taken back in another round (or on another thread) whose entry
        // for another variable of the same cache entry was made at the same count, would read
        // that variable's value.
        let (mine, other, keys_differ_by) = two_sharing_an_entry();
        let epoch = 1 << 20;
        let seen = std::cell::RefCell::new(Vec::new());
        let ctx = Context::new().with_value(mine, "mine".to_string());
        let mut future = pin!(reader(mine, &seen).with_context(ctx));
        pretend_round(epoch, 100);
        assert!(poll_once(future.as_mut()).is_pending());
        pretend_round(epoch ^ keys_differ_by, 100);
        Context::new()
            .with_value(other, "other's".to_string())
            .run(|| assert_eq!(other.get().as_deref(), Some("other's")));
        assert!(poll_once(future.as_mut()).is_pending());
        let seen = seen.take();
        // The premise: the other variable's entry has the future's last stamp's count.
        assert_eq!(count_of(seen[0].2), 101);
        assert_eq!(seen[1].1.as_deref(), Some("mine"));
        assert_eq!(count_of(seen[1].2), 102, "read under a new stamp");
    }

    #[test]
    fn a_callers_stamp_of_another_round_is_never_taken_back() {
        // As above, for the stamp of the frame that a guard puts back when it leaves.
        let (mine, other, keys_differ_by) = two_sharing_an_entry();
        let epoch = 1 << 21;
        let mut caller = Context::new().with_value(mine, "mine".to_string());
        caller.run(|| {
            pretend_round(epoch, 100);
            assert_eq!(mine.get().as_deref(), Some("mine"));
            assert_eq!(count_of(stamp()), 101);
            Context::new()
                .with_value(other, "other's".to_string())
                .run(|| {
                    pretend_round(epoch ^ keys_differ_by, 100);
                    assert_eq!(other.get().as_deref(), Some("other's"));
                    assert_eq!(count_of(stamp()), 101);
                });
            assert_eq!(mine.get().as_deref(), Some("mine"));
            assert_eq!(count_of(stamp()), 102, "read under a new stamp");
        });
    }

    #[test]
    fn a_context_replaced_or_taken_out_between_polls_is_read_afresh() {
        let seen = std::cell::RefCell::new(Vec::new());
        let ctx = Context::new().with_value(&NAME, "first".to_string());
        let mut future = pin!(reader(&NAME, &seen).with_context(ctx));
        assert!(poll_once(future.as_mut()).is_pending());
        // Replaced, as a scope does; the first context stays alive, so that a stale read
        // would find its value.
        let replaced = std::mem::replace(
            WithContext::context_mut(future.as_mut()),
            Context::new().with_value(&NAME, "second".to_string()),
        );
        assert!(poll_once(future.as_mut()).is_pending());
        // Taken out, as a finished task hands its context over.
        #[cfg(feature = "tokio")]
        let taken = {
            let taken = WithContext::take_context(future.as_mut());
            assert!(poll_once(future.as_mut()).is_pending());
            taken
        };
        let seen: Vec<_> = seen.take().into_iter().map(|(_, v, _)| v).collect();
        assert_eq!(
            seen[..2],
            [Some("first".to_string()), Some("second".to_string())]
        );
        #[cfg(feature = "tokio")]
        {
            assert_eq!(seen[2], None);
            drop(taken);
        }
        drop(replaced);
    }

    #[test]
    fn a_future_that_writes_after_its_stamp_was_taken_back_reads_what_it_wrote() {
        // Between two polls the caller reads under a new stamp; the future, its stamp taken
        // back, then writes and reads: under a stamp of its own, not the caller's.
        let ctx = Context::new().with_value(&NAME, "first".to_string());
        let mut poll = 0;
        let future = std::future::poll_fn(|_| {
            poll += 1;
            assert_eq!(NAME.get().as_deref(), Some("first"), "poll {poll}");
            if poll == 2 {
                drop(NAME.set("second".to_string()));
                assert_eq!(NAME.get().as_deref(), Some("second"));
            }
            Poll::<()>::Pending
        });
        let mut future = pin!(future.with_context(ctx));
        let mut caller = Context::new().with_value(&NAME, "caller's".to_string());
        caller.run(|| {
            assert!(poll_once(future.as_mut()).is_pending());
            let _write = NAME.set("caller's, changed".to_string());
            assert_eq!(NAME.get().as_deref(), Some("caller's, changed"));
            assert!(poll_once(future.as_mut()).is_pending());
            assert_eq!(NAME.get().as_deref(), Some("caller's, changed"));
        });
    }

    #[test]
    fn primed_bindings_read_under_the_primed_stamp_until_a_write() {
        static OTHER: ContextVar<Name> = ContextVar::new("other");
        let mut ctx = Context::new()
            .with_value(&NAME, "a".to_string())
            .with_value(&OTHER, "b".to_string());
        ctx.run(|| {
            prime_reads();
            let primed = stamp();
            assert_ne!(primed, NO_STAMP);
            // Both read what they are bound to, with no lookup: the stamp stays.
            assert_eq!(NAME.get().as_deref(), Some("a"));
            assert_eq!(OTHER.get().as_deref(), Some("b"));
            assert_eq!(stamp(), primed);
            // A write leaves the entries behind: the next read sees the new value.
            let _token = NAME.set("c".to_string());
            assert_eq!(NAME.get().as_deref(), Some("c"));
            assert_eq!(OTHER.get().as_deref(), Some("b"));
            assert_ne!(stamp(), primed);
        });
        assert_eq!(NAME.get(), None);
    }

    #[test]
    fn a_frame_with_many_bindings_in_its_root_is_not_primed() {
        let mut ctx = SHARERS[..40].iter().fold(Context::new(), |ctx, var| {
            ctx.with_value(var, "x".to_string())
        });
        ctx.run(|| {
            forget();
            prime_reads();
            assert_eq!(stamp(), NO_STAMP, "no entry made");
            assert_eq!(SHARERS[3].get().as_deref(), Some("x"));
        });
    }

    /// Leaves the thread without a stamp, as a write does.
    fn forget() {
        fast(Fast::forget_stamp);
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

    /// The hooks' deferred enter runs inside a poll's swap, and may run code that reads (a
    /// subscriber's `on_enter`): here it starts a new round of stamps, and another frame reads
    /// at the count the future's kept stamp has, for a key that shares its entry. The poll must
    /// not take its kept stamp, checked before that enter, back after it.
    #[cfg(feature = "hooks")]
    #[test]
    fn a_stamp_found_good_before_a_deferred_enter_is_checked_again_after_it() {
        thread_local! {
            static OTHER: Cell<Option<(&'static ContextVar<Name>, u32)>> =
                const { Cell::new(None) };
            static KEEP: RefCell<Option<Context>> = const { RefCell::new(None) };
        }
        fn enter(_: tokio::task::Id) {
            let (other, epoch) = OTHER.get().expect("set before the poll");
            pretend_round(epoch, 100);
            let mut ctx = Context::new().with_value(other, "other's".to_string());
            ctx.run(|| assert_eq!(other.get().as_deref(), Some("other's")));
            // Kept alive: the entry it left points into it.
            KEEP.with(|keep| *keep.borrow_mut() = Some(ctx));
        }
        let (mine, other, keys_differ_by) = two_sharing_an_entry();
        let epoch = 1 << 23;
        OTHER.set(Some((other, epoch ^ keys_differ_by)));
        let id = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async { tokio::spawn(async {}).id() });
        let seen = RefCell::new(Vec::new());
        let ctx = Context::new().with_value(mine, "mine".to_string());
        let mut future = pin!(reader(mine, &seen).with_context(ctx));
        pretend_round(epoch, 100);
        assert!(poll_once(future.as_mut()).is_pending());
        enter_later(id, enter);
        assert!(poll_once(future.as_mut()).is_pending());
        assert_eq!(seen.take()[1].1.as_deref(), Some("mine"));
        KEEP.with(|keep| keep.borrow_mut().take());
    }

    #[test]
    fn a_value_lent_through_the_cache_outlives_its_binding_while_lent() {
        Context::new().run(|| {
            let first = NAME.set("first".to_string());
            // A hit: the read before records where the value is.
            assert_eq!(NAME.get().as_deref(), Some("first"));
            let seen = NAME.with(move |name| {
                let name = name.expect("set above");
                // The binding removed, then another made, while the value is lent: the lent
                // one is then held by nothing else.
                NAME.reset(first).unwrap();
                assert_eq!(NAME.get(), None);
                let second = NAME.set("second".to_string());
                assert_eq!(
                    NAME.with(|n| n.map(ToString::to_string)).as_deref(),
                    Some("second")
                );
                NAME.reset(second).unwrap();
                name.clone()
            });
            assert_eq!(seen, "first");
        });
    }

    /// A `Key` whose proof of `Copy` is there at the first call and gone after: values it
    /// stored in place must still be lent soundly (Miri checks the lending).
    #[test]
    fn with_lends_soundly_whatever_a_key_answers_each_time() {
        use std::sync::atomic::AtomicBool;

        static NO_PROOF: AtomicBool = AtomicBool::new(false);

        enum Fickle {}

        impl Key for Fickle {
            type Value = [u64; 2];
            type Default = NoDefault;

            fn copy_proof() -> Option<CopyProof<[u64; 2]>> {
                (!NO_PROOF.load(Ordering::Relaxed)).then(CopyProof::new)
            }
        }

        static FICKLE: ContextVar<Fickle> = ContextVar::new("fickle");

        Context::new().run(|| {
            let token = FICKLE.set([1, 2]);
            // A read records where the value is, in place.
            assert_eq!(FICKLE.get(), Some([1, 2]));
            NO_PROOF.store(true, Ordering::Relaxed);
            for _ in 0..3 {
                let lent = FICKLE.with(|value| {
                    // Reads the whole context (the leaf beside the value) while it is lent.
                    let listed = format!("{:?}", Context::current());
                    (value.copied(), listed.contains("fickle"))
                });
                assert_eq!(lent, (Some([1, 2]), true));
            }
            FICKLE.reset(token).unwrap();
            NO_PROOF.store(false, Ordering::Relaxed);
        });
    }

    /// A large `Copy` value is stored shared and lent by reference: `with` puts no copy of it
    /// on the stack.
    #[test]
    #[cfg_attr(
        miri,
        ignore = "a megabyte value: slow under Miri, and about the stack, not UB"
    )]
    #[allow(clippy::large_stack_arrays)] // Made on a thread with a stack large enough.
    fn with_lends_a_large_copy_value_without_copying_it_onto_the_stack() {
        #[derive(Clone, Copy)]
        struct Large([u8; 1 << 20]);

        enum LargeKey {}

        impl Key for LargeKey {
            type Value = Large;
            type Default = NoDefault;

            // What `#[context_var]` writes for a `Copy` type.
            fn copy_proof() -> Option<CopyProof<Large>> {
                Some(CopyProof::new())
            }
        }

        static LARGE: ContextVar<LargeKey> = ContextVar::new("large");

        let mut context = std::thread::Builder::new()
            .stack_size(16 << 20)
            .spawn(|| Context::new().with_value(&LARGE, Large([7; 1 << 20])))
            .unwrap()
            .join()
            .unwrap();
        let first = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || context.run(|| LARGE.with(|large| large.map(|l| l.0[1 << 19]))))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(first, Some(7));
    }

    /// A root let go of with its values still in it (what the last of two threads letting go
    /// of one context at once does) drops them inside a context that holds their bindings,
    /// not in the thread's: a `Drop` reads the dropped context's values.
    #[test]
    fn a_root_let_go_of_full_drops_its_values_inside_a_context_of_their_own() {
        thread_local! {
            static SAW: std::cell::RefCell<Vec<Option<String>>> = const {
                std::cell::RefCell::new(Vec::new())
            };
        }
        struct ReadsName;

        impl Drop for ReadsName {
            fn drop(&mut self) {
                SAW.with(|saw| saw.borrow_mut().push(NAME.get()));
            }
        }

        enum ReadsKey {}

        impl Key for ReadsKey {
            type Value = std::sync::Arc<ReadsName>;
            type Default = NoDefault;
        }

        static READS: ContextVar<ReadsKey> = ContextVar::new("reads");

        Context::new().run(|| {
            let _ = NAME.set("thread's".to_string());
            let mut ctx = Context::new()
                .with_value(&NAME, "dropped context's".to_string())
                .with_value(&READS, std::sync::Arc::new(ReadsName));
            // The map, its root held by nobody else, let go of whole: no `Context` drop.
            let map = ctx.take_map();
            drop(ctx);
            drop(map);
            assert_eq!(NAME.get().as_deref(), Some("thread's"));
        });
        let saw = SAW.with(std::cell::RefCell::take);
        assert_eq!(saw, [Some("dropped context's".to_string())]);
    }

    /// A value's `Clone` (run by `get`) may set variables in a context it enters, one that does
    /// not hold the value; a set in the context the value is read from is refused, changing
    /// nothing. (Under Miri: the value being cloned stays valid throughout.)
    #[test]
    fn a_clone_sets_in_a_context_it_enters_but_not_in_the_one_it_is_read_from() {
        struct SetsWhenCloned(String);

        impl Clone for SetsWhenCloned {
            fn clone(&self) -> Self {
                // A fresh context: allowed, and what it sets stays there.
                let mut fresh = Context::new();
                fresh.run(|| drop(NAME.set("inside the clone".to_string())));
                assert_eq!(
                    fresh.run(|| NAME.get()).as_deref(),
                    Some("inside the clone")
                );
                // The context the value is read from: refused.
                let refused = std::panic::catch_unwind(|| drop(NAME.set("refused".to_string())));
                assert!(refused.is_err());
                SetsWhenCloned(self.0.clone())
            }
        }

        enum SetsKey {}

        impl Key for SetsKey {
            type Value = SetsWhenCloned;
            type Default = NoDefault;
        }

        static SETS: ContextVar<SetsKey> = ContextVar::new("sets");

        let mut ctx = Context::new()
            .with_value(&NAME, "read from".to_string())
            .with_value(&SETS, SetsWhenCloned("value".to_string()));
        let got = ctx.run(|| (SETS.get().map(|v| v.0), NAME.get()));
        assert_eq!(
            got,
            (Some("value".to_string()), Some("read from".to_string()))
        );
    }
}
