//! The persistent sorted map behind the metadata: a B-tree whose nodes sit behind `Arc`.
//!
//! Cloning a map clones one `Arc`, whatever its size. A write goes through
//! [`Arc::make_mut`] on the way down: nodes nobody else holds change in place, shared ones are
//! copied, and only the nodes on the path to the key are (one per level, plus a sibling where
//! a remove borrows or merges), the rest of the tree staying shared with every older version.
//! A clone taken before a write never sees it.
//!
//! A node holds up to [`CAP`] entries, so 10,000 keys take five levels where a binary tree
//! takes fourteen: a write visits, and copies when shared, that many fewer allocations.
//! Each node keeps the first 16 bytes of its keys (their [`Prefix`]es) in one array next to
//! its entries: a lookup searches the prefixes and reads a key itself only where prefixes tie,
//! so most comparisons touch the node and not the key's separate allocation.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::sync::Arc;

/// The leading bytes of a key, ordered as the keys are where two prefixes differ.
pub(crate) type Prefix = (u64, u64);

/// A key whose [`Prefix`] orders it: where `a.prefix() < b.prefix()`, `a < b`. Equal prefixes
/// say nothing; the keys themselves are compared then. A key and what it borrows as have
/// the same prefix.
pub(crate) trait Prefixed {
    fn prefix(&self) -> Prefix;
}

impl Prefixed for str {
    /// The first 16 bytes, big-endian, zero-padded: a shorter string pads with zeros, which
    /// sort below or level with any byte, so differing prefixes order as the strings do.
    fn prefix(&self) -> Prefix {
        let mut bytes = [0; 16];
        let len = self.len().min(16);
        bytes[..len].copy_from_slice(&self.as_bytes()[..len]);
        let [high @ .., _, _, _, _, _, _, _, _] = bytes;
        let [_, _, _, _, _, _, _, _, low @ ..] = bytes;
        (u64::from_be_bytes(high), u64::from_be_bytes(low))
    }
}

impl Prefixed for Arc<str> {
    fn prefix(&self) -> Prefix {
        str::prefix(self)
    }
}

/// A sorted map from `K` to `V`, cheap to clone and copy-on-write.
pub(crate) struct Tree<K, V> {
    /// `None` when empty: a root, once there, holds at least one entry.
    root: Option<Arc<Node<K, V>>>,
}

/// Half the most children a node has: every node but the root holds `B - 1` entries or more.
/// Six keeps a node (about 900 bytes with the metadata's entries) small enough for the
/// allocator's per-thread cache; eight measured more instructions and more cache misses
/// per set.
const B: usize = 6;
/// The most entries a node holds.
const CAP: usize = 2 * B - 1;
/// The fewest entries a node other than the root holds.
const MIN: usize = B - 1;

/// A node: `len` entries, in key order through `slots`, their prefixes in `prefixes`; below a node that is
/// not a leaf, `len + 1` children, the keys of `children[i]` sorting between the entries
/// `i - 1` and `i`. Slots past `len` are empty (`None`).
struct Node<K, V> {
    len: usize,
    prefixes: [Prefix; CAP],
    children: [Option<Arc<Node<K, V>>>; CAP + 1],
    /// `slots[i]` is where in `entries` the `i`-th entry in key order sits.
    slots: [u8; CAP],
    /// The entries, in `entries[..len]` but in the order they came: an insert writes one
    /// slot and shifts only `prefixes` and `slots`, not the entries themselves.
    entries: [Option<(K, V)>; CAP],
}

impl<K: Clone, V: Clone> Clone for Node<K, V> {
    fn clone(&self) -> Self {
        Node {
            len: self.len,
            prefixes: self.prefixes,
            children: self.children.clone(),
            slots: self.slots,
            entries: self.entries.clone(),
        }
    }
}

impl<K, V> Clone for Tree<K, V> {
    fn clone(&self) -> Self {
        Tree {
            root: self.root.clone(),
        }
    }
}

impl<K, V> Default for Tree<K, V> {
    fn default() -> Self {
        Tree { root: None }
    }
}

/// Where a key sits in a node: `Ok(i)`, entry `i`; `Err(i)`, below child `i` (before entry `i`).
type Position = Result<usize, usize>;

impl<K, V> Node<K, V> {
    fn empty() -> Self {
        Node {
            len: 0,
            prefixes: [(0, 0); CAP],
            children: std::array::from_fn(|_| None),
            slots: [0; CAP],
            entries: std::array::from_fn(|_| None),
        }
    }

    fn is_leaf(&self) -> bool {
        self.children[0].is_none()
    }

    fn entry(&self, index: usize) -> &(K, V) {
        self.entries[usize::from(self.slots[index])]
            .as_ref()
            .expect("an entry below len")
    }

    fn entry_mut(&mut self, index: usize) -> &mut Option<(K, V)> {
        &mut self.entries[usize::from(self.slots[index])]
    }

    /// Takes out the entry at `index` (not its children); the last slot fills its slot.
    fn remove_entry(&mut self, index: usize) -> (Prefix, (K, V)) {
        let len = self.len;
        let prefix = self.prefixes[index];
        self.prefixes.copy_within(index + 1..len, index);
        let slot = self.slots[index];
        self.slots.copy_within(index + 1..len, index);
        let last = len - 1;
        let entry = self.entries[usize::from(slot)]
            .take()
            .expect("an entry below len");
        if usize::from(slot) != last {
            self.entries[usize::from(slot)] = self.entries[last].take();
            let moved = self.slots[..last]
                .iter_mut()
                .find(|s| usize::from(**s) == last)
                .expect("every slot below len is someone's");
            *moved = slot;
        }
        self.len = last;
        (prefix, entry)
    }

    fn child(&self, index: usize) -> &Arc<Node<K, V>> {
        self.children[index]
            .as_ref()
            .expect("a child below an inner node")
    }

    fn child_mut(&mut self, index: usize) -> &mut Arc<Node<K, V>> {
        self.children[index]
            .as_mut()
            .expect("a child below an inner node")
    }

    /// Where `key`, whose prefix is `prefix`, sits: a binary search on the prefixes that reads
    /// an entry's key only where the prefixes tie.
    #[inline]
    fn search<Q>(&self, key: &Q, prefix: Prefix) -> Position
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let (mut low, mut high) = (0, self.len);
        while low < high {
            let middle = low + (high - low) / 2;
            let order = match prefix.cmp(&self.prefixes[middle]) {
                Ordering::Equal => key.cmp(self.entry(middle).0.borrow()),
                order => order,
            };
            match order {
                Ordering::Less => high = middle,
                Ordering::Greater => low = middle + 1,
                Ordering::Equal => return Ok(middle),
            }
        }
        Err(low)
    }

    /// Puts an entry at `index`, and `right` (`None` in a leaf) just after it among the
    /// children; the node has room.
    fn insert_at(&mut self, index: usize, prefix: Prefix, entry: (K, V), right: Link<K, V>) {
        let len = self.len;
        debug_assert!(len < CAP);
        self.prefixes.copy_within(index..len, index + 1);
        self.prefixes[index] = prefix;
        self.slots.copy_within(index..len, index + 1);
        self.slots[index] = u8::try_from(len).expect("CAP fits in u8");
        self.entries[len] = Some(entry);
        if right.is_some() {
            self.children[index + 1..=len + 1].rotate_right(1);
            self.children[index + 1] = right;
        }
        self.len = len + 1;
    }

    /// Takes out the entry at `index` and, in an inner node, the child just after it.
    fn remove_at(&mut self, index: usize) -> (Prefix, (K, V), Link<K, V>) {
        let len = self.len;
        let right = self.children[index + 1].take();
        if right.is_some() {
            self.children[index + 1..=len].rotate_left(1);
        }
        let (prefix, entry) = self.remove_entry(index);
        (prefix, entry, right)
    }

    /// Moves the upper half of a full node into a new node; returns the middle entry, which
    /// goes up between the two, and the new node.
    fn split(&mut self) -> (Prefix, (K, V), Arc<Node<K, V>>) {
        debug_assert_eq!(self.len, CAP);
        let mut upper = Arc::new(Node::empty());
        let right = Arc::get_mut(&mut upper).expect("just made");
        // Both halves come out with their entries in key order, slot by slot.
        let mut taken: [Option<(K, V)>; CAP] = std::array::from_fn(|_| None);
        for (to, &slot) in taken.iter_mut().zip(&self.slots) {
            *to = self.entries[usize::from(slot)].take();
        }
        let mut taken = taken.into_iter();
        for (to, from) in self.entries.iter_mut().zip(taken.by_ref().take(B - 1)) {
            *to = from;
        }
        let middle = taken.next().flatten().expect("a full node");
        for (to, from) in right.entries.iter_mut().zip(taken) {
            *to = from;
        }
        for (slot, index) in self.slots.iter_mut().zip(0..) {
            *slot = index;
        }
        right.slots = self.slots;
        right.prefixes[..CAP - B].copy_from_slice(&self.prefixes[B..]);
        for (to, from) in right.children.iter_mut().zip(&mut self.children[B..]) {
            *to = from.take();
        }
        right.len = CAP - B;
        self.len = B - 1;
        (self.prefixes[B - 1], middle, upper)
    }
}

type Link<K, V> = Option<Arc<Node<K, V>>>;

impl<K: Ord + Clone + Prefixed, V: Clone> Tree<K, V> {
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + Prefixed + ?Sized,
    {
        let prefix = key.prefix();
        let mut node = self.root.as_deref()?;
        loop {
            match node.search(key, prefix) {
                Ok(index) => return Some(&node.entry(index).1),
                Err(index) => node = node.children[index].as_deref()?,
            }
        }
    }

    pub(crate) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + Prefixed + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Binds `key` to `value`; returns the value it replaces, if any (the key first stored is
    /// kept).
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let prefix = key.prefix();
        let Some(root) = &mut self.root else {
            let mut node = Node::empty();
            node.insert_at(0, prefix, (key, value), None);
            self.root = Some(Arc::new(node));
            return None;
        };
        match insert(root, prefix, key, value) {
            Inserted::Replaced(old) => Some(old),
            Inserted::Added => None,
            Inserted::Split(prefix, middle, right) => {
                // The tree grows a level at the top.
                let mut node = Node::empty();
                node.children[0] = self.root.take();
                node.insert_at(0, prefix, middle, Some(right));
                self.root = Some(Arc::new(node));
                None
            }
        }
    }

    /// Unbinds `key`; returns its value, if it was bound. A tree without `key` is left
    /// untouched (no node copied).
    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + Prefixed + ?Sized,
    {
        if !self.contains_key(key) {
            return None;
        }
        let root = self.root.as_mut()?;
        let (_, value) = remove(root, key, key.prefix());
        if root.len == 0 {
            // The tree loses a level at the top (or its last entry).
            let root = Arc::make_mut(root);
            self.root = root.children[0].take();
        }
        Some(value)
    }

    /// The entries in key order.
    pub(crate) fn iter(&self) -> Iter<'_, K, V> {
        let mut iter = Iter { stack: Vec::new() };
        iter.push_left(self.root.as_deref());
        iter
    }
}

/// What an insert below a node did to it.
enum Inserted<K, V> {
    /// The key was there: its old value.
    Replaced(V),
    /// A new entry, with room for it: nothing above changes.
    Added,
    /// A new entry, and the node split: the middle entry and the new right half go up.
    /// (The half is already behind its `Arc`: the result stays small, not a whole node.)
    Split(Prefix, (K, V), Arc<Node<K, V>>),
}

fn insert<K: Ord + Clone, V: Clone>(
    link: &mut Arc<Node<K, V>>,
    prefix: Prefix,
    key: K,
    value: V,
) -> Inserted<K, V> {
    let node = Arc::make_mut(link);
    let (index, prefix, entry, right) = match node.search(&key, prefix) {
        Ok(index) => {
            let entry = node.entry_mut(index).as_mut().expect("an entry below len");
            return Inserted::Replaced(std::mem::replace(&mut entry.1, value));
        }
        Err(index) if node.is_leaf() => (index, prefix, (key, value), None),
        Err(index) => match insert(node.child_mut(index), prefix, key, value) {
            Inserted::Split(prefix, middle, right) => (index, prefix, middle, Some(right)),
            done => return done,
        },
    };
    if node.len < CAP {
        node.insert_at(index, prefix, entry, right);
        return Inserted::Added;
    }
    let (up_prefix, up, mut upper) = node.split();
    if index < B {
        node.insert_at(index, prefix, entry, right);
    } else {
        Arc::get_mut(&mut upper)
            .expect("just made")
            .insert_at(index - B, prefix, entry, right);
    }
    Inserted::Split(up_prefix, up, upper)
}

/// Removes `key`, which is there, from below `link`; returns its entry. The node at `link`
/// may be left with fewer than [`MIN`] entries: its parent mends it.
fn remove<K, V, Q>(link: &mut Arc<Node<K, V>>, key: &Q, prefix: Prefix) -> (K, V)
where
    K: Ord + Clone + Borrow<Q>,
    V: Clone,
    Q: Ord + ?Sized,
{
    let node = Arc::make_mut(link);
    match node.search(key, prefix) {
        Ok(index) if node.is_leaf() => node.remove_at(index).1,
        Ok(index) => {
            // The next key takes this entry's place.
            let (next_prefix, next) = remove_min(node.child_mut(index + 1));
            node.prefixes[index] = next_prefix;
            let removed = node
                .entry_mut(index)
                .replace(next)
                .expect("an entry below len");
            mend(node, index + 1);
            removed
        }
        Err(index) => {
            let removed = remove(node.child_mut(index), key, prefix);
            mend(node, index);
            removed
        }
    }
}

/// Removes the least entry below `link`.
fn remove_min<K: Clone, V: Clone>(link: &mut Arc<Node<K, V>>) -> (Prefix, (K, V)) {
    let node = Arc::make_mut(link);
    if node.is_leaf() {
        let (prefix, entry, _) = node.remove_at(0);
        return (prefix, entry);
    }
    let min = remove_min(node.child_mut(0));
    mend(node, 0);
    min
}

/// Brings child `index` of `node` back to [`MIN`] entries if a remove left it short: it
/// borrows an entry through `node` from a sibling that can spare one, or merges with one.
fn mend<K: Clone, V: Clone>(node: &mut Node<K, V>, index: usize) {
    if node.child(index).len >= MIN {
        return;
    }
    if index > 0 && node.child(index - 1).len > MIN {
        // The left sibling's last entry goes up, the separator down to the front.
        let (left, right) = node.children.split_at_mut(index);
        let left = Arc::make_mut(left[index - 1].as_mut().expect("a sibling"));
        let child = Arc::make_mut(right[0].as_mut().expect("a child"));
        // `remove_at` takes the child after the entry too: the last one, moved with it.
        let (prefix, entry, last) = left.remove_at(left.len - 1);
        let separator = node.entries[usize::from(node.slots[index - 1])]
            .replace(entry)
            .expect("a separator");
        let separator_prefix = std::mem::replace(&mut node.prefixes[index - 1], prefix);
        // Insert at the front: the moved child becomes the first, before the old first.
        child.insert_at(0, separator_prefix, separator, None);
        if let Some(last) = last {
            child.children[..=child.len].rotate_right(1);
            child.children[0] = Some(last);
        }
    } else if index < node.len && node.child(index + 1).len > MIN {
        // The right sibling's first entry goes up, the separator down to the end.
        let (left, right) = node.children.split_at_mut(index + 1);
        let child = Arc::make_mut(left[index].as_mut().expect("a child"));
        let sibling = Arc::make_mut(right[0].as_mut().expect("a sibling"));
        let first_child = sibling.children[0].take();
        if first_child.is_some() {
            sibling.children[..=sibling.len].rotate_left(1);
        }
        // With its first child gone, the first entry's right child sits in slot 0: take the
        // entry alone.
        let (prefix, entry) = sibling.remove_entry(0);
        let separator = node.entries[usize::from(node.slots[index])]
            .replace(entry)
            .expect("a separator");
        let separator_prefix = std::mem::replace(&mut node.prefixes[index], prefix);
        let at = child.len;
        child.insert_at(at, separator_prefix, separator, first_child);
    } else {
        // Merge with a sibling: both short or at the minimum, they fit in one node.
        let at = if index < node.len { index } else { index - 1 };
        let (separator_prefix, separator, right) = node.remove_at(at);
        let right = Arc::unwrap_or_clone(right.expect("a right sibling"));
        let left = Arc::make_mut(node.child_mut(at));
        let base = left.len;
        left.insert_at(base, separator_prefix, separator, None);
        let Node {
            len,
            prefixes,
            slots,
            mut entries,
            children,
        } = right;
        for (&prefix, &slot) in prefixes.iter().zip(&slots).take(len) {
            let entry = entries[usize::from(slot)]
                .take()
                .expect("an entry below len");
            let at = left.len;
            left.insert_at(at, prefix, entry, None);
        }
        for (to, from) in left.children[base + 1..].iter_mut().zip(children) {
            *to = from;
        }
    }
}

/// The entries of a [`Tree`] in key order.
pub(crate) struct Iter<'a, K, V> {
    /// The nodes on the way to the next entry, each with the index of its next entry; the
    /// children before that entry are done.
    stack: Vec<(&'a Node<K, V>, usize)>,
}

impl<'a, K, V> Iter<'a, K, V> {
    fn push_left(&mut self, mut node: Option<&'a Node<K, V>>) {
        while let Some(next) = node {
            self.stack.push((next, 0));
            node = next.children[0].as_deref();
        }
    }
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (node, index) = self.stack.last_mut()?;
            let node: &'a Node<K, V> = node;
            if *index < node.len {
                let at = *index;
                *index += 1;
                self.push_left(node.children[at + 1].as_deref());
                let (key, value) = node.entry(at);
                return Some((key, value));
            }
            self.stack.pop();
        }
    }
}

impl<'a, K: Ord + Clone + Prefixed, V: Clone> IntoIterator for &'a Tree<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;

    fn into_iter(self) -> Iter<'a, K, V> {
        self.iter()
    }
}

impl<K: Ord + Clone + Prefixed, V: Clone> Extend<(K, V)> for Tree<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, entries: I) {
        for (key, value) in entries {
            self.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::{CAP, MIN, Node, Prefix, Prefixed, Tree};

    impl Prefixed for u64 {
        fn prefix(&self) -> Prefix {
            (0, *self)
        }
    }

    /// Checks the order, the prefixes, the occupancy of every node and that every leaf sits
    /// at the same depth; returns the number of levels.
    fn check<K: Ord + Prefixed, V>(tree: &Tree<K, V>) -> usize {
        tree.root
            .as_ref()
            .map_or(0, |root| check_node(root, None, None, true))
    }

    fn check_node<K: Ord + Prefixed, V>(
        node: &Node<K, V>,
        low: Option<&K>,
        high: Option<&K>,
        root: bool,
    ) -> usize {
        let len = node.len;
        assert!(len <= CAP, "overfull");
        assert!(len >= if root { 1 } else { MIN }, "underfull");
        assert!(
            node.entries[len..].iter().all(Option::is_none),
            "entry past len"
        );
        assert!(
            node.entries[..len].iter().all(Option::is_some),
            "a gap below len"
        );
        let mut slots = node.slots[..len].to_vec();
        slots.sort_unstable();
        assert!(
            slots.iter().copied().eq(0..u8::try_from(len).unwrap()),
            "slots not a permutation"
        );
        let keys: Vec<&K> = (0..len).map(|index| &node.entry(index).0).collect();
        for (index, key) in keys.iter().enumerate() {
            assert_eq!(node.prefixes[index], key.prefix(), "stale prefix");
        }
        let bounds: Vec<Option<&K>> = [low]
            .into_iter()
            .chain(keys.iter().map(|key| Some(*key)))
            .chain([high])
            .collect();
        for pair in bounds.windows(2) {
            if let [Some(a), Some(b)] = pair {
                assert!(a < b, "out of order");
            }
        }
        if node.is_leaf() {
            assert!(node.children.iter().all(Option::is_none), "child in a leaf");
            return 1;
        }
        assert!(
            node.children[len + 1..].iter().all(Option::is_none),
            "child past len"
        );
        let depths: Vec<usize> = (0..=len)
            .map(|index| {
                let child = node.children[index].as_ref().expect("a child per gap");
                check_node(child, bounds[index], bounds[index + 1], false)
            })
            .collect();
        assert!(
            depths.windows(2).all(|pair| pair[0] == pair[1]),
            "leaves at different depths"
        );
        1 + depths[0]
    }

    /// A small random number generator (xorshift) from `seed`: the random tests' steps.
    fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }

    #[test]
    // Safe code only, and thousands of steps: Miri would take many minutes over what the
    // native run of the README's test command already checks.
    #[cfg_attr(miri, ignore)]
    fn stays_a_valid_b_tree_equal_to_a_btreemap_and_old_versions_stay_as_they_were() {
        let mut next = xorshift(0x2545_F491_4F6C_DD1D_u64);
        let mut tree = Tree::default();
        let mut model = BTreeMap::new();
        let mut versions = Vec::new();
        // Miri interprets every step: a shorter run there still covers every rotation.
        let steps = if cfg!(miri) { 1_500 } else { 20_000 };
        for step in 0..steps {
            let key = next() % 600;
            if next() % 3 == 0 {
                assert_eq!(tree.remove(&key), model.remove(&key));
            } else {
                assert_eq!(tree.insert(key, step), model.insert(key, step));
            }
            if step % 500 == 0 {
                versions.push((tree.clone(), model.clone()));
            }
        }
        for (tree, model) in versions.iter().chain([&(tree, model)]) {
            check(tree);
            assert!(tree.iter().eq(model.iter()));
            assert!(model.iter().all(|(k, v)| tree.get(k) == Some(v)));
        }
    }

    #[test]
    // Safe code only, on trees of thousands of keys: see above.
    #[cfg_attr(miri, ignore)]
    fn ascending_inserts_stay_logarithmic() {
        // Miri interprets every step: fewer keys there, with the bound for that many.
        let (keys, bound) = if cfg!(miri) {
            (2_000_u64, 4)
        } else {
            (100_000_u64, 7)
        };
        let mut tree = Tree::default();
        for key in 0..keys {
            tree.insert(key, ());
        }
        // Every node but the root has 6 children or more: a tree of n keys has at most
        // 1 + log6((n + 1) / 2) levels, 7 for 100,000 and 4 for 2,000.
        assert!(check(&tree) <= bound);
    }

    #[test]
    fn prefixes_order_as_the_strings_do() {
        let words = [
            "",
            "\0",
            "a",
            "a\0",
            "a\0\0",
            "ab",
            "b",
            "abcdefghijklmnop",
            "abcdefghijklmno",
            "abcdefghijklmnop\0",
            "abcdefghijklmnopq",
            "abcdefghijklmnopa",
            "abcdefgh",
            "\u{ff}",
            "é",
            "abcdefghijklmnoé",
        ];
        for a in words {
            for b in words {
                if a.prefix() != b.prefix() {
                    assert_eq!(a.prefix().cmp(&b.prefix()), a.cmp(b), "{a:?} {b:?}");
                }
            }
        }
    }

    /// String keys that often share their first 16 bytes or more, are prefixes of one
    /// another or end in NUL bytes: the prefixes tie and the keys themselves decide.
    #[test]
    // Safe code only, and thousands of steps: Miri would take many minutes over what the
    // native run of the README's test command already checks.
    #[cfg_attr(miri, ignore)]
    fn string_keys_with_shared_prefixes_match_a_btreemap_and_old_versions_stay_as_they_were() {
        let mut next = xorshift(0x9E37_79B9_7F4A_7C15_u64);
        let stems = [
            "",
            "a",
            "field-",
            "abcdefghijklmno",
            "abcdefghijklmnop",
            "abcdefghijklmnopq",
        ];
        let tails = ["", "\0", "\0\0", "0", "1", "9", "é", "10", "x\0y"];
        let mut pick = move |len: usize| usize::try_from(next() % 1024).expect("small") % len;
        let mut make_key = move || -> Arc<str> {
            let stem = stems[pick(stems.len())];
            let tail = tails[pick(tails.len())];
            let number = pick(40);
            match pick(3) {
                0 => format!("{stem}{tail}"),
                1 => format!("{stem}{number}{tail}"),
                _ => format!("{stem}{tail}{number}"),
            }
            .into()
        };
        let mut tree = Tree::default();
        let mut model = BTreeMap::new();
        let mut versions = Vec::new();
        let writes = if cfg!(miri) { 1_000 } else { 20_000 };
        for step in 0..writes {
            let key = make_key();
            match step % 5 {
                0 | 1 => assert_eq!(tree.remove(&*key), model.remove(&*key)),
                _ => assert_eq!(
                    tree.insert(key.clone(), step),
                    model.insert(key.clone(), step)
                ),
            }
            assert_eq!(tree.get(&*key), model.get(&*key));
            if step % 500 == 0 {
                versions.push((tree.clone(), model.clone()));
            }
        }
        for (tree, model) in versions.iter().chain([&(tree, model)]) {
            check(tree);
            assert!(tree.iter().eq(model.iter()));
            assert!(model.iter().all(|(k, v)| tree.get(&**k) == Some(v)));
        }
    }

    /// Grows a tree to four levels or more and shrinks it back to nothing by random inserts and
    /// removes, so that nodes split and merge at every level; keeps a version every few
    /// steps and checks them all at the end against the model each was taken with.
    #[test]
    // Safe code only, and thousands of steps: Miri would take many minutes over what the
    // native run of the README's test command already checks.
    #[cfg_attr(miri, ignore)]
    fn grows_and_shrinks_through_every_level_and_every_kept_version_stays_as_it_was() {
        let mut next = xorshift(0xD1B5_4A32_D192_ED03_u64);
        // Full nodes hold 11 entries: 6,000 keys take four levels or more, 400 three (under
        // Miri, which interprets every step: a few minutes for 1,500).
        let (keys, every) = if cfg!(miri) { (400, 50) } else { (6_000, 97) };
        let mut tree = Tree::default();
        let mut model = BTreeMap::new();
        let mut versions = Vec::new();
        let mut levels = Vec::new();
        let mut step = 0_u64;
        // Up: mostly inserts; down: mostly removes, of keys that are there half of the time.
        for (phase, target) in [(true, keys), (false, 0)] {
            while if phase {
                model.len() < target
            } else {
                model.len() > target
            } {
                let key = next() % (2 * keys as u64);
                let insert = next() % 4 < if phase { 3 } else { 1 };
                if insert {
                    assert_eq!(tree.insert(key, step), model.insert(key, step));
                } else {
                    let key = if next() % 2 == 0 {
                        model.range(key..).next().map_or(key, |(k, _)| *k)
                    } else {
                        key
                    };
                    assert_eq!(tree.remove(&key), model.remove(&key));
                }
                if step % every == 0 {
                    levels.push(check(&tree));
                    versions.push((tree.clone(), model.clone()));
                }
                step += 1;
            }
        }
        assert!(tree.root.is_none(), "an empty tree holds no node");
        let top = *levels.iter().max().expect("versions");
        assert!(top >= if cfg!(miri) { 3 } else { 4 }, "only {top} levels");
        for height in 1..top {
            assert!(
                levels.iter().rev().any(|&l| l == height),
                "never back to {height} levels"
            );
        }
        for (tree, model) in &versions {
            check(tree);
            assert!(tree.iter().eq(model.iter()));
            assert!(model.iter().all(|(k, v)| tree.get(k) == Some(v)));
            assert!((0..2 * keys as u64).all(|k| tree.contains_key(&k) == model.contains_key(&k)));
        }
    }

    /// A write copies the nodes on its path and no other: the rest, and the entries in them,
    /// stay shared with the version it started from.
    #[test]
    // Safe code only, on trees of thousands of keys: see above.
    #[cfg_attr(miri, ignore)]
    fn a_write_copies_only_the_path_and_shares_the_rest() {
        fn nodes<K, V>(node: &Arc<Node<K, V>>, into: &mut Vec<*const Node<K, V>>) {
            into.push(Arc::as_ptr(node));
            for child in node.children.iter().flatten() {
                nodes(child, into);
            }
        }
        let mut tree = Tree::default();
        for key in 0..3_000_u64 {
            tree.insert(key * 2, Arc::new(key));
        }
        let levels = check(&tree);
        let before = tree.clone();
        let mut old = Vec::new();
        nodes(before.root.as_ref().unwrap(), &mut old);
        for (write, key) in [(0, 1001_u64), (1, 2000), (2, 4242), (1, 4242)] {
            let mut after = before.clone();
            match write {
                0 => assert_eq!(after.insert(key, Arc::new(0)), None),
                1 => assert!(after.remove(&key).is_some()),
                _ => assert!(after.insert(key, Arc::new(0)).is_some()),
            }
            let mut new = Vec::new();
            nodes(after.root.as_ref().unwrap(), &mut new);
            let copied = new.iter().filter(|node| !old.contains(node)).count();
            // The path, plus a split half or a sibling lent from or merged into per level.
            assert!(
                copied <= 2 * levels,
                "{copied} nodes copied for {levels} levels"
            );
            assert!(copied >= 1);
            // Every value not written is the same allocation in both versions.
            for ((k, a), (_, b)) in before
                .iter()
                .zip(after.iter())
                .filter(|((k, _), _)| **k != key)
            {
                assert!(Arc::ptr_eq(a, b) || *k > key, "value {k} copied");
            }
            assert!(before.iter().map(|(k, _)| *k).eq((0..3_000).map(|k| k * 2)));
        }
    }
}
