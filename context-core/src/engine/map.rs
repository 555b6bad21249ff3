//! The persistent map behind every [`Context`](crate::Context).
//!
//! A hash array mapped trie (the structure `CPython`'s `contextvars` uses) keyed by the dense
//! `u32` id each variable receives on first use. Because ids are handed out one after the
//! other, their low bits are already evenly spread, so the trie indexes by the raw id five
//! bits at a time and never hashes; because ids are unique, two keys always part within the
//! seven levels that 32 bits allow, so there are no collision nodes.
//!
//! Nodes sit behind `Arc` and every write goes through [`Arc::make_mut`]:
//! - a snapshot is one `Arc::clone` of the root, whatever the number of bindings;
//! - a write to a map nobody else shares mutates in place, with no copying at all;
//! - a write to a shared map copies only the nodes on the path to the key (one node below
//!   32 bindings, two below 1,024).
//!
//! Values are never cloned: a binding holds either an `Arc` of the value, which copies of a
//! node share, or, for a small `Copy` value, the value itself (see [`Value`]).
//!
//! No write here drops a value: every write hands the replaced value back to the caller, so
//! that the caller can drop it after releasing the thread's state. A value's `Drop` may then
//! read or set context variables freely. The one drop here is that of a root let go of with
//! its values still in it (two threads letting go of it at once), which hands them to a
//! context of their own (`Branch::drop_orphaned`).

use std::any::Any;
use std::cell::Cell;
use std::cmp::Ordering;
use std::fmt;
use std::mem::{MaybeUninit, align_of, size_of};
use std::sync::Arc;
use std::sync::atomic::{Ordering as AtomicOrdering, fence};

use crate::carried::Carried;
use crate::engine::current::catch_drop_panic;

/// A value as the map stores it.
///
/// A value whose type is `Copy` and fits in two words (`u64`, `&'static str`, a small id
/// struct) is held in place: storing it allocates nothing, and copying a node copies its bytes
/// where an `Arc` would take a reference. A copy of such a value cannot be told apart from
/// the value shared, since a `Copy` type has no `Drop`, and no interior mutability of its own
/// (`UnsafeCell` is not `Copy`); the library only ever lends values, never hands them back by
/// value. Any other value is shared behind an `Arc`, as before: a snapshot and its copies see
/// one value.
#[derive(Clone)]
pub(crate) struct Value(Repr);

#[derive(Clone)]
enum Repr {
    /// A `T: Copy + Send + Sync + 'static` that [`fits_inline`], and how to see it as `dyn Any`.
    Inline {
        bytes: MaybeUninit<Inline>,
        view: fn(*const ()) -> *const (dyn Any + Send + Sync),
    },
    Shared(Arc<dyn Any + Send + Sync>),
}

/// The room of an inline value: two words, aligned as a word.
type Inline = [usize; 2];

/// Whether a `T` fits in [`Inline`]'s room and alignment.
pub(crate) const fn fits_inline<T>() -> bool {
    size_of::<T>() <= size_of::<Inline>() && align_of::<T>() <= align_of::<Inline>()
}

/// The fat pointer of the `T` at `at`: `Repr::Inline::view` for a `T`.
fn view<T: Any + Send + Sync>(at: *const ()) -> *const (dyn Any + Send + Sync) {
    at.cast::<T>()
}

/// Evidence that `T` is `Copy`, which only code that knows it can make ([`CopyProof::new`]).
/// A variable's [`Key`](crate::Key) hands it to the map so that small values are stored in
/// place; `#[context_var]` writes it wherever the value type is `Copy`.
#[doc(hidden)]
pub struct CopyProof<T> {
    /// Copies a `T` bit for bit: `get` reads such a value without calling its `Clone`.
    copy: fn(&T) -> T,
}

impl<T: Copy> CopyProof<T> {
    /// The proof, for a `Copy` type.
    #[must_use]
    pub const fn new() -> Self {
        CopyProof { copy: copy_of::<T> }
    }
}

/// `*value`: what [`CopyProof::copy`] calls.
fn copy_of<T: Copy>(value: &T) -> T {
    *value
}

impl<T> CopyProof<T> {
    /// A bitwise copy of `value`, which runs no code of anyone's (not `T`'s `Clone`).
    #[inline]
    pub(crate) fn copy(self, value: &T) -> T {
        (self.copy)(value)
    }
}

impl<T: Copy> Default for CopyProof<T> {
    fn default() -> Self {
        CopyProof::new()
    }
}

impl<T> Clone for CopyProof<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for CopyProof<T> {}

impl Value {
    /// Stores `value`: in place where `copy` proves it `Copy` and it fits, else in an `Arc`.
    #[inline]
    #[allow(unsafe_code)]
    pub(crate) fn new<T: Send + Sync + 'static>(value: T, copy: Option<CopyProof<T>>) -> Value {
        if copy.is_some() && fits_inline::<T>() {
            let mut bytes = MaybeUninit::<Inline>::uninit();
            // SAFETY: `fits_inline` checked that a `T` fits in `bytes` and that `bytes` is
            // aligned enough for one, so the write stays in bounds and is aligned.
            unsafe {
                bytes.as_mut_ptr().cast::<T>().write(value);
            }
            Value(Repr::Inline {
                bytes,
                view: view::<T>,
            })
        } else {
            Value(Repr::Shared(Arc::new(value)))
        }
    }

    /// The value, to downcast or format.
    #[inline]
    #[allow(unsafe_code)]
    pub(crate) fn as_any(&self) -> &(dyn Any + Send + Sync) {
        match &self.0 {
            // SAFETY: `new` wrote a `T` into `bytes` and set `view` to `view::<T>`, which
            // only gives the pointer `T`'s `dyn Any` metadata: the result points to that
            // live, initialized `T`. It is `Copy`, so the bitwise copies that cloning a
            // `Value` makes are valid `T`s too; it has no `Drop`, so nothing ever ends its
            // life before `bytes` is freed; and it is borrowed here for as long as `self`.
            Repr::Inline { bytes, view } => unsafe { &*view(bytes.as_ptr().cast::<()>()) },
            Repr::Shared(value) => &**value,
        }
    }

    /// Where the value lives: inside this `Value` for an inline value, in its `Arc` for a
    /// shared one.
    #[inline]
    pub(crate) fn as_ptr(&self) -> *const () {
        match &self.0 {
            Repr::Inline { bytes, .. } => bytes.as_ptr().cast::<()>(),
            Repr::Shared(value) => Arc::as_ptr(value).cast::<()>(),
        }
    }

    /// The value, to change in place, where this `Value` is its only owner (a shared value
    /// no one else holds; never an inline one).
    pub(crate) fn get_mut<T: Any>(&mut self) -> Option<&mut T> {
        match &mut self.0 {
            Repr::Inline { .. } => None,
            Repr::Shared(value) => Arc::get_mut(value)?.downcast_mut(),
        }
    }

    /// Whether dropping this `Value` may run a `Drop` of the value: it is shared and this is
    /// its last owner. (An inline value has no `Drop`.)
    pub(crate) fn may_drop(&self) -> bool {
        match &self.0 {
            Repr::Inline { .. } => false,
            Repr::Shared(value) => Arc::strong_count(value) == 1,
        }
    }

    /// Whether `self` and `other` are one shared value (never for inline values).
    #[cfg(test)]
    pub(crate) fn same(&self, other: &Value) -> bool {
        match (&self.0, &other.0) {
            (Repr::Shared(a), Repr::Shared(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Whether the value is held in place (and so has no `Drop`).
    #[inline]
    pub(crate) fn is_inline(&self) -> bool {
        matches!(self.0, Repr::Inline { .. })
    }
}

/// What the map needs to know about a variable without knowing its type: its name, whether
/// it appears in logs, where it is declared, and how to format its values. `ContextVar` implements it; the map
/// knows nothing else of variables.
pub(crate) trait VarMeta: Sync {
    fn name(&self) -> &'static str;
    fn log(&self) -> bool;
    /// Where the variable is declared (`crate::module::STATIC`).
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    fn path(&self) -> &'static str;
    /// Whether the binding is the crate's own bookkeeping, left out of the mapping view.
    fn hidden(&self) -> bool;
    /// Whether dropping the variable's values runs no code that could see a context (see
    /// `engine::quiet`): they need not be dropped inside it.
    fn drops_quietly(&self) -> bool;
    fn fmt_value(&self, value: &(dyn Any + Send + Sync), f: &mut fmt::Formatter<'_>)
    -> fmt::Result;
}

const BITS: u32 = 5;
const MASK: u32 = (1 << BITS) - 1;

/// One variable's binding.
#[derive(Clone)]
pub(crate) struct Leaf {
    pub(crate) key: u32,
    pub(crate) var: &'static dyn VarMeta,
    pub(crate) value: Value,
}

impl Leaf {
    /// Whether dropping the value runs no code that could see a context: it is held in place
    /// (no `Drop`), or its variable's values drop quietly (see `engine::quiet`).
    #[inline]
    fn drops_quietly(&self) -> bool {
        self.value.is_inline() || self.var.drops_quietly()
    }
}

#[derive(Clone)]
enum Slot {
    Leaf(Leaf),
    Branch(Arc<Branch>),
}

/// An inner node: `bitmap` says which of the 32 positions are occupied, `slots` holds the
/// occupied ones, and `rank` which slot is whose. A node built whole ([`Branch::new`]) has
/// its slots in position order; a slot added later goes at the end (no slot moves, no rank
/// but its own changes), so that the order of the slots is no order the map promises.
struct Branch {
    bitmap: u32,
    /// The number of bindings below, kept up to date in the root only.
    len: u32,
    /// For each position, 1 + the index of its slot, or 0 where empty: a lookup then needs
    /// no population count, which x86-64's baseline has no instruction for, nor the slots any
    /// order.
    rank: [u8; 32],
    slots: Vec<Slot>,
    /// In the root only: what the context carries beside its bindings (the `tracing` span,
    /// OpenTelemetry's context), never a binding. Kept here rather than in each `Context`,
    /// so that a snapshot stays one pointer copy: snapshots taken where the same span is
    /// current share the root, and only a snapshot that must carry something else copies it.
    carried: Carried,
}

impl Drop for Branch {
    /// A root is emptied before it is let go of (its context's values dropped inside the
    /// context, or released where none runs code), except where two threads let go of it
    /// at once: see [`Branch::drop_orphaned`]. A node below the root (which keeps no count)
    /// drops as it is: its values go with the root that held it. (A released root, kept as
    /// the thread's spare, keeps its old count with no slots: it has nothing to drop.)
    #[inline]
    fn drop(&mut self) {
        if (self.len != 0 && !self.slots.is_empty()) || self.carried.is_some() {
            self.drop_orphaned();
        }
    }
}

/// Keeps `root`, emptied, as the thread's spare root.
#[inline]
fn put_aside(root: Arc<Branch>) {
    let _ = SPARE.try_with(move |spare| spare.set(Some(root)));
}

/// Nothing carried: what a map without a root carries.
static NOTHING_CARRIED: Carried = Carried::NONE;

/// The bindings of one context.
#[derive(Clone, Default)]
pub(crate) struct Map {
    /// The root keeps the number of bindings, so that a `Map` is one pointer and entering a
    /// context swaps as little as possible.
    root: Option<Arc<Branch>>,
}

/// The node, to write to in place, where `node` is its only owner: what `Arc::get_mut` does,
/// with a plain load of the count instead of its compare-and-swap, which is the dearest step
/// of a `set` and a `reset` in time. It can, since nothing here ever makes a `Weak` of a node.
#[inline]
#[allow(unsafe_code)]
fn unique_mut(node: &mut Arc<Branch>) -> Option<&mut Branch> {
    if Arc::strong_count(node) != 1 {
        return None;
    }
    // Whatever the other owners did with the node happens before what is done here: their
    // drops lower the count with release ordering, as `Arc::get_mut` relies on too.
    fence(AtomicOrdering::Acquire);
    // SAFETY: `node` is the only `Arc` of this node, and nothing else can reach it:
    // - the count is 1 and `node` is borrowed mutably, so no other `Arc` of it exists, and
    //   none can be made but by cloning `node`, which the borrow prevents for as long as the
    //   result lives;
    // - this module is the only one that sees `Branch`, and it never calls `Arc::downgrade`,
    //   so there is no `Weak` of it either, that could be upgraded meanwhile;
    // - the fence above orders every access of former owners (on any thread) before this one.
    // So the pointer, which `Arc::as_ptr` takes from the allocation without going through a
    // shared reference, may be written through for as long as `node` is borrowed.
    Some(unsafe { &mut *Arc::as_ptr(node).cast_mut() })
}

#[inline]
fn position(key: u32, shift: u32) -> u32 {
    1 << ((key >> shift) & MASK)
}

/// A copy of a node is made to be written to (`Arc::make_mut`): its slots get room for one
/// more, and a small node room for 4 in all, so that the inserts into the copy do not
/// reallocate them at once (a request's context, copied from its layer's base, takes its
/// first few values in one allocation).
impl Clone for Branch {
    fn clone(&self) -> Self {
        let mut slots = Vec::with_capacity((self.slots.len() + 1).max(4));
        slots.extend(self.slots.iter().cloned());
        Branch {
            bitmap: self.bitmap,
            len: self.len,
            rank: self.rank,
            slots,
            carried: self.carried.clone(),
        }
    }
}

thread_local! {
    /// A root node this thread released, emptied ([`Map::release`]), for the next copy of a
    /// shared root to fill instead of allocating a node and its slots. One at most: a root
    /// holds at most 32 slots, so it keeps at most that much room.
    static SPARE: Cell<Option<Arc<Branch>>> = const { Cell::new(None) };
}

impl Branch {
    /// Makes `node` (a root nobody else holds: a spare) a copy of this node, ready to take one
    /// more slot without reallocating them.
    fn copy_into(&self, node: &mut Branch) {
        node.bitmap = self.bitmap;
        node.len = self.len;
        node.rank = self.rank;
        // Into the spare's own slots, which keep their allocation, with room for one more.
        // Not `clone_from`: whether the compiler inlined its loop moved with unrelated code
        // elsewhere (+28 instructions a copy where it did not).
        node.slots.clear();
        node.slots.reserve(self.slots.len() + 1);
        node.slots.extend_from_slice(&self.slots);
        node.carried = self.carried.clone();
    }

    #[inline]
    fn slot(&self, key: u32, shift: u32) -> Option<&Slot> {
        match self.rank[((key >> shift) & MASK) as usize] {
            0 => None,
            rank => self.slots.get(usize::from(rank) - 1),
        }
    }

    /// The slot at `key`'s position in this node, as the root (the first five bits).
    #[inline]
    fn slot_mut(&mut self, key: u32) -> Option<&mut Slot> {
        match self.rank[(key & MASK) as usize] {
            0 => None,
            rank => self.slots.get_mut(usize::from(rank) - 1),
        }
    }

    /// Updates `rank` after the slot of position `at` was removed: the slots after it have
    /// moved one down, and so their ranks are those above the removed slot's: one compare of
    /// each rank with one number, no state carried from one to the next, which the compiler
    /// turns into a few vector operations (two 16-byte compares).
    #[inline]
    fn unrank(&mut self, at: u32) {
        let at = at as usize;
        let rank = self.rank[at];
        for r in &mut self.rank {
            *r -= u8::from(*r > rank);
        }
        self.rank[at] = 0;
    }

    /// Recomputes `rank` from `bitmap`, for a node built from scratch.
    fn reindex(&mut self) {
        let mut next = 0;
        for (position, rank) in self.rank.iter_mut().enumerate() {
            if self.bitmap & (1 << position) == 0 {
                *rank = 0;
            } else {
                next += 1;
                *rank = next;
            }
        }
    }

    fn new(bitmap: u32, slots: Vec<Slot>) -> Branch {
        let mut branch = Branch {
            bitmap,
            len: 0,
            rank: [0; 32],
            slots,
            carried: Carried::NONE,
        };
        branch.reindex();
        branch
    }

    /// A branch holding two leaves whose keys agree on every level above `shift`.
    fn pair(a: Leaf, b: Leaf, shift: u32) -> Branch {
        let (bit_a, bit_b) = (position(a.key, shift), position(b.key, shift));
        match bit_a.cmp(&bit_b) {
            Ordering::Equal => {
                let child = Branch::pair(a, b, shift + BITS);
                Branch::new(bit_a, vec![Slot::Branch(Arc::new(child))])
            }
            Ordering::Less => Branch::new(bit_a | bit_b, vec![Slot::Leaf(a), Slot::Leaf(b)]),
            Ordering::Greater => Branch::new(bit_a | bit_b, vec![Slot::Leaf(b), Slot::Leaf(a)]),
        }
    }

    /// Puts `leaf` at position `at`, which is empty: in a slot after the others.
    #[inline]
    fn add(&mut self, at: u32, leaf: Leaf) {
        self.bitmap |= 1 << at;
        self.slots.push(Slot::Leaf(leaf));
        // At most 32 slots: the rank fits.
        #[allow(clippy::cast_possible_truncation)]
        let rank = self.slots.len() as u8;
        self.rank[at as usize] = rank;
    }

    /// Adds `leaf` to this node, the root, where its position is empty.
    #[inline]
    fn add_to_root(&mut self, leaf: Leaf) {
        self.add(leaf.key & MASK, leaf);
        self.len += 1;
    }

    /// Inserts `leaf` into this node, the root, below its position; returns the value it
    /// replaces.
    #[inline(never)]
    fn insert_below(&mut self, leaf: Leaf) -> Option<Value> {
        let old = self.insert(leaf, 0);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Inserts or replaces; returns the replaced value.
    fn insert(&mut self, leaf: Leaf, shift: u32) -> Option<Value> {
        let at = (leaf.key >> shift) & MASK;
        let rank = self.rank[at as usize];
        if rank == 0 {
            self.add(at, leaf);
            return None;
        }
        match &mut self.slots[usize::from(rank) - 1] {
            Slot::Branch(child) => Arc::make_mut(child).insert(leaf, shift + BITS),
            Slot::Leaf(old) if old.key == leaf.key => {
                Some(std::mem::replace(&mut old.value, leaf.value))
            }
            slot @ Slot::Leaf(_) => {
                let Slot::Leaf(old) = &*slot else {
                    unreachable!("matched as a leaf just above")
                };
                let old = old.clone();
                *slot = Slot::Branch(Arc::new(Branch::pair(old, leaf, shift + BITS)));
                None
            }
        }
    }

    /// The value bound to `key` below this node, to change in place: the nodes on the way are
    /// made this map's own (copied where shared). The caller has checked that `key` is bound.
    fn value_mut(&mut self, key: u32, shift: u32) -> Option<&mut Value> {
        let rank = self.rank[((key >> shift) & MASK) as usize];
        match self.slots.get_mut(usize::from(rank).checked_sub(1)?)? {
            Slot::Branch(child) => Arc::make_mut(child).value_mut(key, shift + BITS),
            Slot::Leaf(leaf) => (leaf.key == key).then_some(&mut leaf.value),
        }
    }

    /// Removes `key`, which the caller has checked is present; returns its value.
    /// Branches left with a single leaf fold into their parent, so the trie stays as shallow
    /// as its keys allow.
    fn remove(&mut self, key: u32, shift: u32) -> Value {
        let at = (key >> shift) & MASK;
        let index = usize::from(self.rank[at as usize]) - 1;
        let removed = match &mut self.slots[index] {
            Slot::Leaf(_) => None,
            Slot::Branch(child) => {
                let child = Arc::make_mut(child);
                let value = child.remove(key, shift + BITS);
                if let [Slot::Leaf(_)] = child.slots.as_slice() {
                    let last = child.slots.pop();
                    self.slots[index] = last.expect("matched a one-element slice just above");
                }
                Some(value)
            }
        };
        if let Some(value) = removed {
            return value;
        }
        self.bitmap &= !(1 << at);
        self.unrank(at);
        match self.slots.remove(index) {
            Slot::Leaf(leaf) => leaf.value,
            Slot::Branch(_) => unreachable!("matched as a leaf just above"),
        }
    }

    /// Whether dropping this node, held by nobody else, would run code of a value's own
    /// `Drop`: a value it alone keeps alive, in it or in a node below that only it holds, is
    /// of a type whose drop is not known to be quiet.
    fn drops_code(&self) -> bool {
        self.slots.iter().any(|slot| match slot {
            Slot::Leaf(leaf) => leaf.value.may_drop() && !leaf.drops_quietly(),
            Slot::Branch(child) => Arc::strong_count(child) == 1 && child.drops_code(),
        })
    }

    /// [`Drop`] for a root dropped with bindings (or a span) in it. Where two holders of a
    /// context's root let go of it at the same moment on two threads, each may see the other
    /// still holding it, so that neither drops the values inside the context (as `Context`'s
    /// `Drop` does for a root it holds alone), and the second to let go is here. (So is a map
    /// dropped whole by code of this crate that did not empty it first: none does.)
    /// Where a value would run code as it goes, the root's bindings are handed, in a root of
    /// their own, to a context of their own and dropped inside it, one value at a time, as
    /// any context's values are: a `Drop` sees the context's bindings, not the thread's, and
    /// a second panicking `Drop` does not abort the process. Where this thread cannot enter a
    /// context (its state is in use, or its locals are being destroyed), they are dropped
    /// here, as before, where two panicking `Drop`s still abort.
    #[cold]
    #[inline(never)]
    fn drop_orphaned(&mut self) {
        if !self.carried.is_some() && !self.drops_code() {
            return;
        }
        if !crate::engine::current::can_enter() {
            return;
        }
        let node = Branch {
            bitmap: self.bitmap,
            len: self.len,
            rank: self.rank,
            slots: std::mem::take(&mut self.slots),
            carried: std::mem::take(&mut self.carried),
        };
        crate::engine::current::drop_orphaned(Map {
            root: Some(Arc::new(node)),
        });
    }

    const EMPTY: Branch = Branch {
        bitmap: 0,
        len: 0,
        rank: [0; 32],
        slots: Vec::new(),
        carried: Carried::NONE,
    };
}

impl Map {
    pub(crate) const EMPTY: Map = Map { root: None };

    pub(crate) fn len(&self) -> usize {
        self.root.as_ref().map_or(0, |root| root.len as usize)
    }

    /// Whether dropping this map may drop values: it has bindings (or carries a span or
    /// OpenTelemetry's context) and no other map shares its root. (A shared root only loses a reference; nodes or values below it may still be
    /// shared, so `true` means "may", not "will".)
    #[inline]
    pub(crate) fn may_drop_values(&self) -> bool {
        self.root
            .as_ref()
            .is_some_and(|root| Arc::strong_count(root) == 1)
    }

    #[inline]
    pub(crate) fn get(&self, key: u32) -> Option<&Leaf> {
        let mut branch = self.root.as_deref()?;
        let mut shift = 0;
        loop {
            match branch.slot(key, shift)? {
                Slot::Leaf(leaf) => return (leaf.key == key).then_some(leaf),
                Slot::Branch(child) => {
                    branch = child;
                    shift += BITS;
                }
            }
        }
    }

    /// Binds `leaf.key`; returns the value it replaces, if any.
    #[inline]
    pub(crate) fn insert(&mut self, leaf: Leaf) -> Option<Value> {
        self.bind(leaf.key, leaf.var, leaf.value)
    }

    /// [`insert`](Self::insert), given the leaf's parts: the common write replaces only the
    /// value, and then moves no more than it.
    #[inline]
    pub(crate) fn bind(
        &mut self,
        key: u32,
        var: &'static dyn VarMeta,
        value: Value,
    ) -> Option<Value> {
        let root = self.root_mut();
        // The common writes: a variable bound again, its leaf right in the root, whose value
        // is replaced in place; a variable bound for the first time where the root has room at
        // its position, whose leaf is added there. Neither needs the descent.
        match root.slot_mut(key) {
            Some(Slot::Leaf(old)) if old.key == key => {
                Some(std::mem::replace(&mut old.value, value))
            }
            None => {
                root.add_to_root(Leaf { key, var, value });
                None
            }
            Some(_) => root.insert_below(Leaf { key, var, value }),
        }
    }

    /// Binds each leaf of `leaves` whose key this map does not bind yet, taking it out of its
    /// slot; a leaf whose key is bound stays in its slot, and the binding wins. One write for
    /// all of them: the root is made this map's own once. (`accept_baggage`'s.)
    #[cfg_attr(not(feature = "baggage"), allow(dead_code))]
    #[inline]
    pub(crate) fn insert_vacant(&mut self, leaves: &mut [Option<Leaf>]) {
        let mut root = self.root_mut();
        for slot in leaves {
            let Some(leaf) = slot else {
                continue;
            };
            match root.slot_mut(leaf.key) {
                None => {}
                Some(Slot::Leaf(old)) if old.key == leaf.key => continue,
                Some(_) => {
                    // Below the root, where it has a branch at the key's position.
                    if self.get(leaf.key).is_none() {
                        if let Some(leaf) = slot.take() {
                            let replaced = self.insert_slow(leaf);
                            debug_assert!(replaced.is_none(), "the key was not bound");
                        }
                    }
                    root = self.root_mut();
                    continue;
                }
            }
            if let Some(leaf) = slot.take() {
                root.add_to_root(leaf);
            }
        }
    }

    /// The value bound to `key`, to change or replace in place, if it is bound: the nodes on
    /// the way to it, the root included, are made this map's own first (copied where another
    /// map shares them). A map that does not hold `key` is left untouched.
    pub(crate) fn value_mut(&mut self, key: u32) -> Option<&mut Value> {
        self.get(key)?;
        self.root_mut().value_mut(key, 0)
    }

    /// Swaps `key`'s binding with `slot`: afterwards `key` is bound to what `slot` held
    /// (unbound for `None`), and `slot` holds what `key` was bound to. `set` and `reset` are
    /// this one exchange, each with the value it keeps in place (the token's old value), so
    /// that nothing is moved through return values.
    #[inline]
    pub(crate) fn exchange(
        &mut self,
        key: u32,
        var: &'static dyn VarMeta,
        slot: &mut Option<Value>,
    ) {
        // The common write, as in `bind`, with the values swapped in place. (No let chains:
        // the declared minimum Rust, 1.85, has none.)
        if let Some(value) = slot {
            if let Some(Slot::Leaf(old)) = self
                .root
                .as_mut()
                .and_then(unique_mut)
                .and_then(|root| root.slot_mut(key))
            {
                if old.key == key {
                    std::mem::swap(&mut old.value, value);
                    return;
                }
            }
        }
        *slot = match slot.take() {
            Some(value) => self.insert_slow(Leaf { key, var, value }),
            None => self.remove(key),
        };
    }

    /// [`insert`](Self::insert) where it does not replace a value in a root this map alone
    /// holds: it adds a binding, or writes to a root another map shares (or to none).
    #[inline(never)]
    fn insert_slow(&mut self, leaf: Leaf) -> Option<Value> {
        let root = self.root_mut();
        // As in `bind`, now that the root is this map's own: a leaf right in the root (a
        // variable set again in a copy of a snapshot's root) has its value replaced in place.
        // Written out, not shared with `bind`: through `bind`, or through one inlined helper
        // for both, `set` + `reset` with a snapshot alive measured 8 instructions more and a
        // request through the tower layer 35 more.
        match root.slot_mut(leaf.key) {
            Some(Slot::Leaf(old)) if old.key == leaf.key => {
                Some(std::mem::replace(&mut old.value, leaf.value))
            }
            None => {
                root.add_to_root(leaf);
                None
            }
            Some(_) => root.insert_below(leaf),
        }
    }

    /// The root, to write to in place: this map's own, or, where another map shares it, a
    /// copy of it made first; a new one where this map has none.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn root_mut(&mut self) -> &mut Branch {
        // (A count of 1 cannot change under us: this map holds the only reference. Any other
        // count may fall to 1 meanwhile, which only makes the copy unneeded.)
        if self
            .root
            .as_ref()
            .is_none_or(|root| Arc::strong_count(root) != 1)
        {
            self.own_root();
        }
        self.root
            .as_mut()
            .and_then(unique_mut)
            .expect("`own_root` leaves this map the only owner of its root")
    }

    /// Gives this map a root of its own: a copy of the shared one (only the root: the nodes
    /// below and the values stay shared), or an empty one where it has none. The thread's
    /// spare root ([`Map::release`]) is filled where there is one, instead of allocating a
    /// node and its slots: a request's context, copied from its layer's base and written to,
    /// then allocates nothing.
    #[inline(never)]
    fn own_root(&mut self) {
        let mut spare = SPARE.try_with(Cell::take).ok().flatten();
        let root = match (&self.root, spare.as_mut().and_then(unique_mut)) {
            (Some(shared), Some(node)) => {
                shared.copy_into(node);
                spare.take()
            }
            (Some(shared), None) => Some(Arc::new(Branch::clone(shared))),
            (None, Some(node)) => {
                node.bitmap = 0;
                node.len = 0;
                node.rank = [0; 32];
                spare.take()
            }
            (None, None) => Some(Arc::new(Branch::EMPTY)),
        };
        // The shared root loses a reference; the copy holds whatever it holds.
        self.root = root;
    }

    /// Drops this map's bindings and what it carries. A root no other map shares is kept,
    /// emptied, for the next root this thread needs ([`Map::own_root`]): a request's context,
    /// copied from its layer's base and dropped when the request ends, then costs no
    /// allocation. The values are dropped here, by the caller's thread.
    #[inline]
    pub(crate) fn release(mut self) {
        let Some(mut root) = self.root.take() else {
            return;
        };
        let Some(node) = unique_mut(&mut root) else {
            return;
        };
        node.slots.clear();
        // What the context carried goes too, once the root is put aside: a spare root never
        // keeps a span open.
        let carried = std::mem::take(&mut node.carried);
        put_aside(root);
        // (Without the `tracing` and `opentelemetry` features there is nothing to drop.)
        #[allow(clippy::drop_non_drop)]
        drop(carried);
    }

    /// [`release`](Self::release) for bindings whose values are not this map's alone but may
    /// still run code as they go: another map that shares them may let go of them at the same
    /// moment on another thread, and this map's reference may then be the last. A panic of a
    /// value's `Drop` is caught (the first kept in `first_panic`) and the values left are
    /// still dropped, one at a time, so that no second panic starts while a first unwinds
    /// (which aborts the process). Where nothing panics, one catch and a loop that drops the
    /// slots in place: 19 instructions more than `release`, measured where 7 shared values
    /// go (`set` + `reset` with a snapshot alive).
    pub(crate) fn release_caught(mut self, first_panic: &mut Option<Box<dyn Any + Send>>) {
        let Some(mut root) = self.root.take() else {
            return;
        };
        let Some(node) = unique_mut(&mut root) else {
            // Let go of, not dropped (another map holds it), unless that map let go of it at
            // the same moment: then `Branch`'s `Drop` drops the values one at a time.
            catch_drop_panic(move || drop(root), first_panic);
            return;
        };
        // The slots stay in the node while a value drops, the last one first, in place
        // (`truncate` shortens the vector before it drops what it cuts off): where one
        // panics, the loop is left with the rest still there (not dropped while unwinding),
        // and goes on.
        let slots = &mut node.slots;
        while catch_drop_panic(
            || {
                while let Some(last) = slots.len().checked_sub(1) {
                    slots.truncate(last);
                }
            },
            first_panic,
        ) {}
        let carried = std::mem::take(&mut node.carried);
        put_aside(root);
        if carried.is_some() {
            // (Without the `tracing` and `opentelemetry` features there is nothing to drop.)
            #[allow(clippy::drop_non_drop)]
            catch_drop_panic(move || drop(carried), first_panic);
        }
    }

    /// Unbinds `key`; returns its value, if it was bound. A map that does not hold `key` is
    /// left untouched (and unshared nodes are not copied).
    pub(crate) fn remove(&mut self, key: u32) -> Option<Value> {
        self.get(key)?;
        let root = self.root.as_mut().expect("a map holding a key has a root");
        let branch = Arc::make_mut(root);
        let value = branch.remove(key, 0);
        branch.len -= 1;
        if branch.len == 0 && !branch.carried.is_some() {
            self.root = None;
        }
        Some(value)
    }

    /// Releases this map ([`Map::release`]) where dropping it runs no code that could see a
    /// context ([`holds_no_drop`](Self::holds_no_drop)), and says whether it did; otherwise
    /// leaves it as it was. A root that no other map shares (a request's context) is checked
    /// in one pass over its slots, and emptied at once where they are all leaves.
    #[inline]
    pub(crate) fn release_if_no_drop(&mut self) -> bool {
        let Some(root) = self.root.as_mut() else {
            return true;
        };
        let Some(node) = unique_mut(root) else {
            return self.release_if_no_drop_below();
        };
        // A span carried is closed inside the context, with its subscriber's `on_close`.
        if node.carried.is_some() {
            return false;
        }
        let mut below = false;
        for slot in &node.slots {
            match slot {
                Slot::Leaf(leaf) => {
                    if !leaf.drops_quietly() {
                        // A value that may run a `Drop`: the answer, without a second walk.
                        return false;
                    }
                }
                Slot::Branch(_) => below = true,
            }
        }
        if below {
            return self.release_if_no_drop_below();
        }
        node.slots.clear();
        if let Some(root) = self.root.take() {
            put_aside(root);
        }
        true
    }

    /// [`release_if_no_drop`](Self::release_if_no_drop) for a root another map shares, or
    /// with nodes below it.
    #[cold]
    #[inline(never)]
    fn release_if_no_drop_below(&mut self) -> bool {
        if !self.holds_no_drop() {
            return false;
        }
        std::mem::take(self).release();
        true
    }

    /// The bindings in the root, if it holds no more than `most` slots; `None` otherwise
    /// (and for a map without bindings).
    #[inline]
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn root_leaves(&self, most: usize) -> Option<impl Iterator<Item = &Leaf>> {
        let root = self.root.as_deref()?;
        (root.slots.len() <= most).then(|| {
            root.slots.iter().filter_map(|slot| match slot {
                Slot::Leaf(leaf) => Some(leaf),
                Slot::Branch(_) => None,
            })
        })
    }

    /// Whether dropping this map runs no code that could see a context: it carries nothing (a
    /// span's close runs its subscriber's code), and every value is held in place (it has no
    /// `Drop`), or of a type whose drop only frees memory (`String`: see `engine::quiet`).
    /// Such a map need not be dropped inside its context.
    pub(crate) fn holds_no_drop(&self) -> bool {
        fn walk(branch: &Branch) -> bool {
            for slot in &branch.slots {
                let quiet = match slot {
                    Slot::Leaf(leaf) => leaf.drops_quietly(),
                    Slot::Branch(child) => walk(child),
                };
                if !quiet {
                    return false;
                }
            }
            true
        }
        // What the context carries (a span, whose subscriber's `on_close` may read variables)
        // goes inside it too.
        self.root
            .as_deref()
            .is_none_or(|root| !root.carried.is_some() && walk(root))
    }

    /// What the context of these bindings carries besides them.
    #[inline]
    pub(crate) fn carried(&self) -> &Carried {
        self.root
            .as_ref()
            .map_or(&NOTHING_CARRIED, |root| &root.carried)
    }

    /// Makes these bindings carry `carried` instead of what they carried, copying the root if
    /// it is shared (only the root: the nodes below and the values stay shared). What was
    /// carried is dropped here: the caller holds no borrow of the thread's state.
    pub(crate) fn set_carried(&mut self, carried: Carried) {
        match &mut self.root {
            None if !carried.is_some() => {}
            None => {
                let mut root = Branch::EMPTY;
                root.carried = carried;
                self.root = Some(Arc::new(root));
            }
            // What the root carried goes here, as below, not inside a context.
            Some(root) if root.len == 0 && !carried.is_some() => std::mem::take(self).release(),
            Some(root) => {
                let root = Arc::make_mut(root);
                drop(std::mem::replace(&mut root.carried, carried));
            }
        }
    }

    /// Adds to `keys` the keys whose values this map alone keeps alive: the leaves on nodes
    /// no other map shares, whose value has no other owner. Dropping the map would drop
    /// exactly these values; the rest would only lose a reference.
    pub(crate) fn owned_keys(&self, keys: &mut impl Extend<u32>) {
        fn walk(branch: &Branch, keys: &mut impl Extend<u32>) {
            for slot in &branch.slots {
                match slot {
                    Slot::Leaf(leaf) => {
                        if leaf.value.may_drop() {
                            keys.extend(Some(leaf.key));
                        }
                    }
                    Slot::Branch(child) => {
                        if Arc::strong_count(child) == 1 {
                            walk(child, keys);
                        }
                    }
                }
            }
        }
        if let Some(root) = &self.root {
            if Arc::strong_count(root) == 1 {
                walk(root, keys);
            }
        }
    }

    /// Whether dropping this map's bindings would run code of a value's own `Drop`: one of
    /// the values it alone keeps alive (those of [`owned_keys`](Self::owned_keys)) is of a
    /// variable whose values do not drop quietly. The same walk, stopping at the first: kept
    /// apart from `owned_keys`, which every drop of a context's values runs, since one walk
    /// for both measured 72 instructions more on those drops.
    pub(crate) fn drops_code(&self) -> bool {
        self.root
            .as_ref()
            .is_some_and(|root| Arc::strong_count(root) == 1 && root.drops_code())
    }

    /// Whether one of the bindings is the value at `value` (a value's own place, as
    /// [`Value::as_ptr`] gives it).
    pub(crate) fn holds_value(&self, value: *const ()) -> bool {
        self.iter()
            .any(|leaf| std::ptr::eq(leaf.value.as_ptr(), value))
    }

    pub(crate) fn iter(&self) -> Iter<'_> {
        let mut iter = Iter {
            stack: [(&EMPTY_BRANCH, 0); LEVELS],
            depth: 0,
        };
        if let Some(root) = &self.root {
            iter.stack[0] = (root, 0);
            iter.depth = 1;
        }
        iter
    }

    /// Whether `self` and `other` are the same snapshot (share a root).
    #[cfg(test)]
    pub(crate) fn same(&self, other: &Map) -> bool {
        match (&self.root, &other.root) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// The deepest a trie gets: 32 key bits, 5 at a time.
const LEVELS: usize = 32_usize.div_ceil(BITS as usize);

/// Depth-first walk over the leaves, without allocating (log lines iterate on every event).
pub(crate) struct Iter<'a> {
    /// The nodes on the way down, each with the next position to look at in it.
    stack: [(&'a Branch, u32); LEVELS],
    depth: usize,
}

/// What an [`Iter`]'s unused levels hold.
static EMPTY_BRANCH: Branch = Branch::EMPTY;

impl<'a> Iterator for Iter<'a> {
    type Item = &'a Leaf;

    /// In the order of positions, not of slots (a slot added later goes at the end of its
    /// node): the order then depends only on which keys are bound, not on the order they were
    /// bound in.
    fn next(&mut self) -> Option<&'a Leaf> {
        while self.depth > 0 {
            let (node, at) = &mut self.stack[self.depth - 1];
            let left = if *at < 32 {
                node.bitmap & (u32::MAX << *at)
            } else {
                0
            };
            if left == 0 {
                self.depth -= 1;
                continue;
            }
            let position = left.trailing_zeros();
            *at = position + 1;
            match &node.slots[usize::from(node.rank[position as usize]) - 1] {
                Slot::Leaf(leaf) => return Some(leaf),
                Slot::Branch(child) => {
                    self.stack[self.depth] = (child, 0);
                    self.depth += 1;
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::fmt;

    /// A variable's description for the tests: `quiet` says whether its values drop quietly.
    struct Meta {
        quiet: bool,
    }
    impl VarMeta for Meta {
        fn name(&self) -> &'static str {
            "test"
        }
        fn log(&self) -> bool {
            false
        }
        fn path(&self) -> &'static str {
            "tests::META"
        }
        fn hidden(&self) -> bool {
            false
        }
        fn drops_quietly(&self) -> bool {
            self.quiet
        }
        fn fmt_value(
            &self,
            _: &(dyn Any + Send + Sync),
            f: &mut fmt::Formatter<'_>,
        ) -> fmt::Result {
            f.write_str("?")
        }
    }
    static META: Meta = Meta { quiet: false };
    /// A variable whose values drop quietly.
    static QUIET: Meta = Meta { quiet: true };

    /// Even values are stored in place, odd ones shared, so that both kinds meet in every
    /// shape of the trie.
    fn leaf(key: u32, value: u64) -> Leaf {
        Leaf {
            key,
            var: &META,
            value: Value::new(value, value.is_multiple_of(2).then(CopyProof::new)),
        }
    }

    fn read(value: &Value) -> u64 {
        *value.as_any().downcast_ref::<u64>().unwrap()
    }

    fn check(map: &Map, model: &BTreeMap<u32, u64>) {
        assert_eq!(map.len(), model.len());
        for (&k, &v) in model {
            assert_eq!(map.get(k).map(|l| read(&l.value)), Some(v), "key {k}");
        }
        let mut seen: Vec<(u32, u64)> = map.iter().map(|l| (l.key, read(&l.value))).collect();
        seen.sort_unstable();
        assert_eq!(
            seen,
            model.iter().map(|(&k, &v)| (k, v)).collect::<Vec<_>>()
        );
    }

    /// A deterministic pseudo-random sequence, so failures replay.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn matches_a_btreemap_under_random_inserts_and_removes() {
        let mut rng = 0x9E37_79B9_7F4A_7C15;
        for key_space in [3_u64, 40, 1_500, u64::from(u32::MAX)] {
            let mut map = Map::EMPTY;
            let mut model = BTreeMap::new();
            let mut snapshots = Vec::new();
            // Miri interprets every step; a few hundred still reach every trie shape.
            let steps = if cfg!(miri) { 300 } else { 4_000 };
            for step in 0..steps {
                let key = u32::try_from(xorshift(&mut rng) % key_space).unwrap();
                if xorshift(&mut rng).is_multiple_of(3) {
                    assert_eq!(map.remove(key).map(|v| read(&v)), model.remove(&key));
                } else {
                    let old = map.insert(leaf(key, step)).map(|v| read(&v));
                    assert_eq!(old, model.insert(key, step));
                }
                if step % 97 == 0 {
                    snapshots.push((map.clone(), model.clone()));
                }
            }
            check(&map, &model);
            // Writes after a snapshot never show through it.
            for (snapshot, model) in &snapshots {
                check(snapshot, model);
            }
        }
    }

    #[test]
    fn insert_vacant_binds_the_absent_keys_and_leaves_the_bound_ones() {
        let mut rng = 0x2545_F491_4F6C_DD1D;
        for key_space in [8_u64, 40, 1_500, u64::from(u32::MAX)] {
            // Miri interprets every step; a few dozen rounds still reach every case.
            let rounds = if cfg!(miri) { 30 } else { 200 };
            for round in 0..rounds {
                let mut map = Map::EMPTY;
                let mut model = BTreeMap::new();
                for step in 0..xorshift(&mut rng) % 12 {
                    let key = u32::try_from(xorshift(&mut rng) % key_space).unwrap();
                    map.insert(leaf(key, step));
                    model.insert(key, step);
                }
                // Shared or not, empty or not: the write copies what it must.
                let snapshot = (round % 2 == 0).then(|| (map.clone(), model.clone()));
                let mut leaves: Vec<Option<Leaf>> = Vec::new();
                let mut staged: Vec<(u32, u64)> = Vec::new();
                for value in 100..100 + xorshift(&mut rng) % 9 {
                    let key = u32::try_from(xorshift(&mut rng) % key_space).unwrap();
                    // The caller never stages a key twice.
                    if staged.iter().all(|&(k, _)| k != key) {
                        staged.push((key, value));
                        leaves.push(Some(leaf(key, value)));
                    }
                    if xorshift(&mut rng).is_multiple_of(4) {
                        leaves.push(None);
                    }
                }
                let before = model.clone();
                map.insert_vacant(&mut leaves);
                for left in leaves.iter().flatten() {
                    // Left in its slot: the key was bound, and keeps its value.
                    assert!(before.contains_key(&left.key), "key {}", left.key);
                }
                for &(key, value) in &staged {
                    let bound = before.contains_key(&key);
                    let left = leaves.iter().flatten().any(|leaf| leaf.key == key);
                    assert_eq!(left, bound, "key {key}");
                    model.entry(key).or_insert(value);
                }
                check(&map, &model);
                if let Some((snapshot, model)) = &snapshot {
                    check(snapshot, model);
                }
            }
        }
    }

    #[test]
    fn keys_that_share_low_bits_part_deep_in_the_trie() {
        let mut map = Map::EMPTY;
        let keys = [
            0,
            1 << 30,
            1 << 31,
            (1 << 31) | (1 << 30),
            u32::MAX,
            u32::MAX - 1,
        ];
        for (i, &k) in keys.iter().enumerate() {
            map.insert(leaf(k, i as u64));
        }
        let model: BTreeMap<u32, u64> = keys
            .iter()
            .enumerate()
            .map(|(i, &k)| (k, i as u64))
            .collect();
        check(&map, &model);
        for &k in &keys {
            map.remove(k);
        }
        assert_eq!(map.len(), 0);
        assert!(map.same(&Map::EMPTY), "an emptied map drops its root");
    }

    #[test]
    fn removing_an_absent_key_does_not_copy_a_shared_map() {
        let mut map = Map::EMPTY;
        map.insert(leaf(1, 1));
        let snapshot = map.clone();
        assert!(map.remove(2).is_none());
        assert!(map.same(&snapshot));
    }

    #[test]
    fn values_are_shared_not_copied() {
        let mut map = Map::EMPTY;
        let value = Value::new(7_u64, None);
        map.insert(Leaf {
            key: 3,
            var: &META,
            value: value.clone(),
        });
        let copy = map.clone();
        let stored = &copy.get(3).unwrap().value;
        assert!(!stored.is_inline());
        assert!(stored.same(&value));
    }

    #[test]
    fn small_copy_values_are_stored_in_place_and_read_back() {
        fn stored<T: Send + Sync + 'static>(value: T, copy: Option<CopyProof<T>>) -> Value {
            let mut map = Map::EMPTY;
            map.insert(Leaf {
                key: 1,
                var: &META,
                value: Value::new(value, copy),
            });
            // Read through a copy of the node, as a snapshot written to would be.
            let mut copy = map.clone();
            copy.insert(leaf(2, 0));
            copy.get(1).unwrap().value.clone()
        }
        let text = stored("hello", Some(CopyProof::new()));
        assert!(text.is_inline());
        assert_eq!(text.as_any().downcast_ref::<&str>(), Some(&"hello"));
        let pair = stored((7_u8, u64::MAX), Some(CopyProof::new()));
        assert!(pair.is_inline());
        assert_eq!(pair.as_any().downcast_ref(), Some(&(7_u8, u64::MAX)));
        let unit = stored((), Some(CopyProof::new()));
        assert!(unit.is_inline());
        assert!(unit.as_any().is::<()>());
        // Too big, too aligned, or not known to be `Copy`: shared.
        let big = stored([1_u64; 3], Some(CopyProof::new()));
        assert!(!big.is_inline());
        assert_eq!(big.as_any().downcast_ref(), Some(&[1_u64; 3]));
        let aligned = stored(5_u128, Some(CopyProof::new()));
        assert_eq!(
            aligned.is_inline(),
            align_of::<u128>() <= align_of::<usize>()
        );
        assert_eq!(aligned.as_any().downcast_ref(), Some(&5_u128));
        let unknown = stored(9_u64, None);
        assert!(!unknown.is_inline());
        assert!(!unknown.as_any().is::<u32>());
    }

    /// The in-place write that follows another thread's last use of a shared root: under
    /// Miri, a write not ordered after that thread's reads is reported as a data race.
    #[test]
    fn a_root_released_by_another_thread_is_written_in_place_after_its_reads() {
        let mut map = Map::EMPTY;
        map.insert(leaf(1, 2));
        let root = map.root.as_ref().map(Arc::as_ptr);
        let copy = map.clone();
        let reader = std::thread::spawn(move || {
            let seen = copy.get(1).map(|leaf| read(&leaf.value));
            drop(copy);
            seen
        });
        // No join before the write: only the count orders it after the reader's last use.
        while !map.may_drop_values() {
            std::hint::spin_loop();
        }
        let mut slot = Some(Value::new(4_u64, Some(CopyProof::new())));
        map.exchange(1, &META, &mut slot);
        assert_eq!(slot.as_ref().map(read), Some(2));
        assert_eq!(map.root.as_ref().map(Arc::as_ptr), root, "written in place");
        assert_eq!(map.get(1).map(|leaf| read(&leaf.value)), Some(4));
        assert_eq!(reader.join().unwrap(), Some(2));
    }

    #[test]
    fn a_released_root_serves_the_next_copy_with_none_of_its_old_bindings() {
        let mut base = Map::EMPTY;
        base.insert(leaf(1, 10));
        let shared = Value::new(5_u64, None);
        let mut old = base.clone();
        // Enough keys for branches below the root, and a value shared with `shared`.
        for key in 2..70 {
            old.insert(leaf(key, u64::from(key)));
        }
        old.insert(Leaf {
            key: 80,
            var: &META,
            value: shared.clone(),
        });
        assert!(!shared.may_drop(), "the map holds a reference");
        old.release();
        assert!(shared.may_drop(), "releasing the map let go of its values");
        for round in 0..3 {
            let mut copy = base.clone();
            copy.insert(leaf(3, round));
            check(&copy, &BTreeMap::from([(1, 10), (3, round)]));
            check(&base, &BTreeMap::from([(1, 10)]));
            copy.release();
        }
    }

    #[test]
    fn a_map_of_values_held_in_place_has_no_drop_to_run() {
        let mut map = Map::EMPTY;
        assert!(map.holds_no_drop());
        for key in 0..70 {
            map.insert(leaf(key, 2 * u64::from(key)));
        }
        assert!(map.holds_no_drop());
        // An odd value is shared, deep in the trie or not.
        map.insert(leaf(64 + 32, 1));
        assert!(!map.holds_no_drop());
    }

    #[test]
    fn a_map_whose_shared_values_drop_quietly_has_no_drop_to_run() {
        let mut map = Map::EMPTY;
        for key in 0..70 {
            map.insert(Leaf {
                key,
                var: &QUIET,
                value: Value::new(String::from("shared"), None),
            });
        }
        assert!(map.holds_no_drop());
        // One shared value of a variable whose values may run a `Drop`, deep in the trie.
        map.insert(leaf(64 + 32, 1));
        assert!(!map.holds_no_drop());
    }

    #[test]
    fn the_order_of_iteration_depends_only_on_the_keys_bound() {
        // Enough keys for branches below the root, bound in three orders.
        let keys: Vec<u32> = (1..=300).map(|k| k * 7 % 1_024 + 1).collect();
        let orders = [
            keys.clone(),
            keys.iter().rev().copied().collect::<Vec<_>>(),
            keys.iter()
                .copied()
                .filter(|k| k % 2 == 0)
                .chain(keys.iter().copied().filter(|k| k % 2 == 1))
                .collect(),
        ];
        let listed: Vec<Vec<u32>> = orders
            .iter()
            .map(|order| {
                let mut map = Map::EMPTY;
                for &key in order {
                    map.insert(leaf(key, u64::from(key)));
                }
                map.iter().map(|leaf| leaf.key).collect()
            })
            .collect();
        assert_eq!(listed[0].len(), keys.len());
        assert_eq!(listed[0], listed[1]);
        assert_eq!(listed[0], listed[2]);
        // And after removals, as a map built without the removed keys.
        let mut map = Map::EMPTY;
        for &key in &orders[1] {
            map.insert(leaf(key, 0));
        }
        let mut fresh = Map::EMPTY;
        for &key in &keys {
            if key % 3 == 0 {
                map.remove(key);
            } else {
                fresh.insert(leaf(key, 0));
            }
        }
        let order = |map: &Map| map.iter().map(|leaf| leaf.key).collect::<Vec<_>>();
        assert_eq!(order(&map), order(&fresh));
    }

    #[test]
    fn an_inline_value_never_counts_as_one_to_drop() {
        let mut map = Map::EMPTY;
        map.insert(leaf(1, 2));
        map.insert(leaf(2, 3));
        let mut keys = Vec::new();
        map.owned_keys(&mut keys);
        assert_eq!(keys, [2], "only the shared value has a `Drop` that may run");
    }
}
