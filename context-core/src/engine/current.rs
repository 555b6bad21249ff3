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
    /// The task that made `frame` current: `NO_TASK` for the thread's own context and for a
    /// context entered outside any task. Only code of that task sees the frame. Any other
    /// task polled meanwhile on this thread (a task spawned without a context, polled by a
    /// runtime driven inside `Context::run`, or by a `LocalSet` inside a context's future)
    /// sees an empty context and cannot write.
    owner: Task,
}

thread_local! {
    static CURRENT: RefCell<Current> = const {
        RefCell::new(Current { frame: Frame::EMPTY, owner: NO_TASK })
    };
}

impl Current {
    /// Whether the code running now may see and write `frame`.
    #[inline]
    fn visible(&self) -> bool {
        running_task() == self.owner
    }
}

/// The one way to reach the state while it is borrowed: `get` clones the value with the state
/// borrowed (so that a read costs no reference count), and that `Clone` impl writes.
const REENTERED: &str = "contextvars: a context variable was set, or a context entered, from a \
     `Clone` impl while `get` was cloning that value out of the context; read such a value with \
     `with` instead, which releases the context before calling you";

/// Runs `f` on `key`'s binding in the context visible here, if it has one.
///
/// `f` runs with the thread's state borrowed: it may read variables, not set them.
#[inline]
pub(crate) fn find<R>(key: u32, f: impl FnOnce(&Leaf) -> R) -> Option<R> {
    CURRENT
        .try_with(|current| {
            let current = current.try_borrow().expect(REENTERED);
            // Look first: a key bound nowhere reads as unset whoever is running, so only a
            // hit needs to ask tokio which task that is.
            let leaf = current.frame.map.get(key)?;
            current.visible().then(|| f(leaf))
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

/// Runs `f` on the frame that `set` writes to.
///
/// # Errors
/// [`Unwritable`] where there is none.
pub(crate) fn write<R>(f: impl FnOnce(&mut Frame) -> R) -> Result<R, Unwritable> {
    // `f` owns values (the one being set, a token's old value, a guard's saved map): where it
    // is not called, it is dropped after the borrow ends, so that their `Drop` may read
    // variables.
    let mut f = Some(f);
    let result = CURRENT.try_with(|current| {
        let mut current = current.try_borrow_mut().expect(REENTERED);
        if current.visible() {
            Ok(f.take().expect("called once")(&mut current.frame))
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
    let with_frame = |f: &mut dyn FnMut(&mut Frame)| {
        let _ =
            CURRENT.try_with(|current| f(&mut current.try_borrow_mut().expect(REENTERED).frame));
    };
    loop {
        let mut keys = Vec::new();
        with_frame(&mut |frame| keys.extend(frame.map.iter().map(|leaf| leaf.key)));
        if keys.is_empty() {
            break;
        }
        keys.sort_unstable_by(|a, b| b.cmp(a));
        for key in keys {
            let mut value = None;
            with_frame(&mut |frame| value = frame.map.remove(key));
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
            let current = current.try_borrow().expect(REENTERED);
            if current.visible() {
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
    /// What `Current::owner` was before; `None` if nothing was swapped (thread exiting).
    outer_owner: Option<Task>,
}

impl<'a> Entered<'a> {
    #[inline]
    pub(crate) fn new(frame: &'a mut Frame) -> Self {
        let task = running_task();
        let outer_owner = CURRENT
            .try_with(|current| {
                let mut current = current.try_borrow_mut().expect(REENTERED);
                std::mem::swap(&mut current.frame, frame);
                std::mem::replace(&mut current.owner, task)
            })
            .ok();
        Entered { frame, outer_owner }
    }
}

impl Drop for Entered<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Some(outer_owner) = self.outer_owner {
            let frame = &mut *self.frame;
            // If the thread state is gone by now, the bindings went with it.
            let _ = CURRENT.try_with(|current| {
                let mut current = current.try_borrow_mut().expect(REENTERED);
                std::mem::swap(&mut current.frame, frame);
                current.owner = outer_owner;
            });
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
    CURRENT
        .try_with(|current| {
            let mut current = current.try_borrow_mut().expect(REENTERED);
            std::mem::swap(&mut current.frame, frame);
            current.owner.replace(task)
        })
        .ok()
}

/// Undoes [`enter_owned`]: `frame` (holding what was current before) becomes current again,
/// owned by `outer_owner`, and `frame` receives the task's bindings back.
#[cfg(feature = "hooks")]
#[inline]
pub(crate) fn exit_owned(frame: &mut Frame, outer_owner: Task) {
    // If the thread state is gone by now, the bindings went with it.
    let _ = CURRENT.try_with(|current| {
        let mut current = current.try_borrow_mut().expect(REENTERED);
        std::mem::swap(&mut current.frame, frame);
        current.owner = outer_owner;
    });
}
