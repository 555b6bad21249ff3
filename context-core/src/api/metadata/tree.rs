//! The persistent sorted map behind the metadata: an AVL tree whose nodes sit behind `Arc`.
//!
//! Cloning a map clones one `Arc`, whatever its size. A write goes through
//! [`Arc::make_mut`] on the way down: nodes nobody else holds change in place, shared ones are
//! copied, and only the nodes on the path to the key are (about 1.44 log2 n of them at
//! worst), the rest of the tree staying shared with every older version. A clone taken
//! before a write never sees it.
//!
//! Each node keeps the first 16 bytes of its key (its [`Prefix`]) next to its links: a lookup
//! compares prefixes on the way down and reads a key itself only where the prefixes tie, so
//! most levels touch one node and not also the key's separate allocation.

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
    root: Link<K, V>,
}

type Link<K, V> = Option<Arc<Node<K, V>>>;

// In declaration order, so that what a descent reads (after the `Arc`'s counts, which
// `make_mut` reads first) sits together at the start of the allocation.
#[repr(C)]
struct Node<K, V> {
    prefix: Prefix,
    left: Link<K, V>,
    right: Link<K, V>,
    height: u8,
    key: K,
    value: V,
}

impl<K: Clone, V: Clone> Clone for Node<K, V> {
    fn clone(&self) -> Self {
        Node {
            prefix: self.prefix,
            key: self.key.clone(),
            value: self.value.clone(),
            left: self.left.clone(),
            right: self.right.clone(),
            height: self.height,
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

fn height<K, V>(link: &Link<K, V>) -> u8 {
    link.as_ref().map_or(0, |node| node.height)
}

/// Where `key`, whose prefix is `prefix`, goes relative to `node`'s key.
#[inline]
fn compare<K, V, Q>(key: &Q, prefix: Prefix, node: &Node<K, V>) -> Ordering
where
    K: Borrow<Q>,
    Q: Ord + ?Sized,
{
    match prefix.cmp(&node.prefix) {
        Ordering::Equal => key.cmp(node.key.borrow()),
        order => order,
    }
}

impl<K, V> Node<K, V> {
    fn fix_height(&mut self) {
        self.height = 1 + height(&self.left).max(height(&self.right));
    }

    /// Left height minus right height.
    fn balance(&self) -> i16 {
        i16::from(height(&self.left)) - i16::from(height(&self.right))
    }
}

impl<K: Ord + Clone + Prefixed, V: Clone> Tree<K, V> {
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + Prefixed + ?Sized,
    {
        let prefix = key.prefix();
        let mut link = &self.root;
        while let Some(node) = link {
            match compare(key, prefix, node) {
                Ordering::Less => link = &node.left,
                Ordering::Greater => link = &node.right,
                Ordering::Equal => return Some(&node.value),
            }
        }
        None
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
        match insert(&mut self.root, prefix, key, value) {
            Inserted::Replaced(old) => Some(old),
            Inserted::Taller | Inserted::Absorbed => None,
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
        remove(&mut self.root, key, key.prefix()).map(|(_, value)| value)
    }

    /// The entries in key order.
    pub(crate) fn iter(&self) -> Iter<'_, K, V> {
        let mut iter = Iter { stack: Vec::new() };
        iter.push_left(&self.root);
        iter
    }
}

/// What an insert below a node did to it.
enum Inserted<V> {
    /// The key was there: its old value.
    Replaced(V),
    /// A new node, and the subtree grew taller: the nodes above must rebalance.
    Taller,
    /// A new node, the subtree as tall as before: nothing above changes.
    Absorbed,
}

fn insert<K: Ord + Clone, V: Clone>(
    link: &mut Link<K, V>,
    prefix: Prefix,
    key: K,
    value: V,
) -> Inserted<V> {
    let Some(node) = link else {
        *link = Some(Arc::new(Node {
            prefix,
            key,
            value,
            left: None,
            right: None,
            height: 1,
        }));
        return Inserted::Taller;
    };
    let node = Arc::make_mut(node);
    let below = match compare(&key, prefix, node) {
        Ordering::Less => insert(&mut node.left, prefix, key, value),
        Ordering::Greater => insert(&mut node.right, prefix, key, value),
        Ordering::Equal => return Inserted::Replaced(std::mem::replace(&mut node.value, value)),
    };
    if !matches!(below, Inserted::Taller) {
        return below;
    }
    // Once a subtree keeps its height, no node above it changes: most inserts stop here
    // after a level or two.
    let before = node.height;
    rebalance(link);
    if height(link) == before {
        Inserted::Absorbed
    } else {
        Inserted::Taller
    }
}

/// Removes `key` from below `link`; returns the removed key and value, if it was there.
fn remove<K, V, Q>(link: &mut Link<K, V>, key: &Q, prefix: Prefix) -> Option<(K, V)>
where
    K: Ord + Clone + Borrow<Q>,
    V: Clone,
    Q: Ord + ?Sized,
{
    let order = compare(key, prefix, link.as_ref()?);
    let node = Arc::make_mut(link.as_mut()?);
    let removed = match order {
        Ordering::Less => remove(&mut node.left, key, prefix),
        Ordering::Greater => remove(&mut node.right, key, prefix),
        Ordering::Equal if node.right.is_none() => {
            // The left subtree (a leaf at most) takes this node's place.
            let left = node.left.take();
            let node = std::mem::replace(link, left).expect("matched above");
            let node = Arc::unwrap_or_clone(node);
            return Some((node.key, node.value));
        }
        Ordering::Equal => {
            // The next key takes this node's place.
            let (prefix, key, value) = remove_min(&mut node.right);
            node.prefix = prefix;
            let key = std::mem::replace(&mut node.key, key);
            let value = std::mem::replace(&mut node.value, value);
            Some((key, value))
        }
    };
    rebalance(link);
    removed
}

/// Removes the least key below `link`, which is not empty.
fn remove_min<K: Clone, V: Clone>(link: &mut Link<K, V>) -> (Prefix, K, V) {
    let node = Arc::make_mut(link.as_mut().expect("not empty"));
    if node.left.is_some() {
        let min = remove_min(&mut node.left);
        rebalance(link);
        return min;
    }
    let right = node.right.take();
    let node = std::mem::replace(link, right).expect("not empty");
    let node = Arc::unwrap_or_clone(node);
    (node.prefix, node.key, node.value)
}

/// Restores the AVL balance at `link`, whose subtrees are balanced and differ in height by
/// at most two, and its height.
fn rebalance<K: Clone, V: Clone>(link: &mut Link<K, V>) {
    let Some(node) = link else { return };
    let node = Arc::make_mut(node);
    node.fix_height();
    let balance = node.balance();
    if balance > 1 {
        if node.left.as_ref().is_some_and(|left| left.balance() < 0) {
            rotate_left(&mut node.left);
        }
        rotate_right(link);
    } else if balance < -1 {
        if node.right.as_ref().is_some_and(|right| right.balance() > 0) {
            rotate_right(&mut node.right);
        }
        rotate_left(link);
    }
}

/// Lifts the left child of `link` into its place.
fn rotate_right<K: Clone, V: Clone>(link: &mut Link<K, V>) {
    let mut top = link.take().expect("a node to rotate");
    let mut left = Arc::make_mut(&mut top).left.take().expect("a left child");
    {
        let top = Arc::make_mut(&mut top);
        top.left = Arc::make_mut(&mut left).right.take();
        top.fix_height();
    }
    let lifted = Arc::make_mut(&mut left);
    lifted.right = Some(top);
    lifted.fix_height();
    *link = Some(left);
}

/// Lifts the right child of `link` into its place.
fn rotate_left<K: Clone, V: Clone>(link: &mut Link<K, V>) {
    let mut top = link.take().expect("a node to rotate");
    let mut right = Arc::make_mut(&mut top).right.take().expect("a right child");
    {
        let top = Arc::make_mut(&mut top);
        top.right = Arc::make_mut(&mut right).left.take();
        top.fix_height();
    }
    let lifted = Arc::make_mut(&mut right);
    lifted.left = Some(top);
    lifted.fix_height();
    *link = Some(right);
}

/// The entries of a [`Tree`] in key order.
pub(crate) struct Iter<'a, K, V> {
    /// The nodes whose key comes next, the next one on top; their right subtrees follow each.
    stack: Vec<&'a Node<K, V>>,
}

impl<'a, K, V> Iter<'a, K, V> {
    fn push_left(&mut self, mut link: &'a Link<K, V>) {
        while let Some(node) = link {
            self.stack.push(node);
            link = &node.left;
        }
    }
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        let node = self.stack.pop()?;
        self.push_left(&node.right);
        Some((&node.key, &node.value))
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

    use super::{Link, Prefix, Prefixed, Tree};

    impl Prefixed for u64 {
        fn prefix(&self) -> Prefix {
            (0, *self)
        }
    }

    /// Checks the order, the AVL balance, the stored heights and prefixes; returns the height.
    fn check<K: Ord + Prefixed, V>(link: &Link<K, V>, low: Option<&K>, high: Option<&K>) -> u8 {
        let Some(node) = link else { return 0 };
        assert_eq!(node.prefix, node.key.prefix(), "stale prefix");
        assert!(low.is_none_or(|low| *low < node.key), "out of order");
        assert!(high.is_none_or(|high| node.key < *high), "out of order");
        let left = check(&node.left, low, Some(&node.key));
        let right = check(&node.right, Some(&node.key), high);
        assert!(left.abs_diff(right) <= 1, "unbalanced");
        assert_eq!(node.height, 1 + left.max(right), "stale height");
        node.height
    }

    #[test]
    fn stays_a_balanced_search_tree_equal_to_a_btreemap_and_old_versions_stay_as_they_were() {
        let mut seed = 0x2545_F491_4F6C_DD1D_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
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
            check(&tree.root, None, None);
            assert!(tree.iter().eq(model.iter()));
            assert!(model.iter().all(|(k, v)| tree.get(k) == Some(v)));
        }
    }

    #[test]
    fn ascending_inserts_stay_logarithmic() {
        // Miri interprets every step: fewer keys there, with the bound for that many.
        let (keys, bound) = if cfg!(miri) {
            (2_000_u64, 16)
        } else {
            (100_000_u64, 24)
        };
        let mut tree = Tree::default();
        for key in 0..keys {
            tree.insert(key, ());
        }
        // An AVL tree of n keys is at most 1.44 log2(n) high: 24 for 100,000, 16 for 2,000.
        assert!(check(&tree.root, None, None) <= bound);
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
    fn string_keys_with_shared_prefixes_match_a_btreemap_and_old_versions_stay_as_they_were() {
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
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
            check(&tree.root, None, None);
            assert!(tree.iter().eq(model.iter()));
            assert!(model.iter().all(|(k, v)| tree.get(&**k) == Some(v)));
        }
    }
}
