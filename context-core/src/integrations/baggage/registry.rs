//! Which variables claim which baggage keys.
//!
//! `#[context_var(baggage = "tenant")]` implements [`BaggageKey`] for the variable's key type
//! and submits a [`Claim`] to an `inventory` collection, so every variable declared so
//! anywhere in the program (any crate of it) is known at run time without a list to keep up
//! to date. The collection is read once, on the first need.

use std::collections::HashMap;
use std::fmt::Display;
use std::marker::PhantomData;
use std::str::FromStr;
use std::sync::OnceLock;

use crate::context::Context;
use crate::map::Leaf;
use crate::var::{ContextVar, Key};

use super::error::BaggageError;
use super::header::excerpt;

/// A variable's baggage key and codec, implemented by `#[context_var(baggage = "…")]`.
///
/// The generated impl holds for any value type: its methods go through [`TextProbe`], which
/// picks `Display` and `FromStr` where the type has them. A type that has not is refused by
/// a separate check in the generated code, one error on the type, so the impl itself never
/// adds errors of its own.
#[doc(hidden)]
pub trait BaggageKey: Key {
    /// The key in the `baggage` header.
    const KEY: &'static str;
    /// The value as text: its `Display`.
    fn to_text(value: &Self::Value) -> String;
    /// A value from text: its `FromStr`, the error as text.
    ///
    /// # Errors
    /// `FromStr`'s, displayed.
    fn from_text(text: &str) -> Result<Self::Value, String>;
}

/// Chooses a value type's text codec at the macro's call site, where the type is concrete
/// (auto-ref specialization): [`ViaText`] where it is `Display + FromStr`, else
/// [`ViaNothing`], which is never run (the code does not compile then).
#[doc(hidden)]
pub struct TextProbe<T>(PhantomData<fn() -> T>);

impl<T> TextProbe<T> {
    /// The probe.
    #[must_use]
    pub const fn new() -> Self {
        TextProbe(PhantomData)
    }
}

impl<T> Default for TextProbe<T> {
    fn default() -> Self {
        TextProbe::new()
    }
}

/// The codec of a `Display + FromStr` type.
#[doc(hidden)]
pub trait ViaText<T> {
    /// `Display`.
    fn encode(&self, value: &T) -> String;
    /// `FromStr`, the error displayed.
    ///
    /// # Errors
    /// `FromStr`'s.
    fn decode(&self, text: &str) -> Result<T, String>;
}

impl<T: Display + FromStr<Err: Display>> ViaText<T> for &TextProbe<T> {
    fn encode(&self, value: &T) -> String {
        value.to_string()
    }

    fn decode(&self, text: &str) -> Result<T, String> {
        text.parse().map_err(|err: T::Err| err.to_string())
    }
}

/// The fallback for other types: the generated check refuses them, so this never runs.
#[doc(hidden)]
pub trait ViaNothing<T> {
    /// Never called.
    fn encode(&self, value: &T) -> String;
    /// Never called.
    ///
    /// # Errors
    /// Always.
    fn decode(&self, text: &str) -> Result<T, String>;
}

impl<T> ViaNothing<T> for TextProbe<T> {
    fn encode(&self, _: &T) -> String {
        String::new()
    }

    fn decode(&self, _: &str) -> Result<T, String> {
        Err("this type has no text form".to_string())
    }
}

/// A variable that claims a baggage key, without its type.
#[doc(hidden)]
pub trait Claims: Sync {
    /// The baggage key.
    fn key(&self) -> &'static str;
    /// The variable's name.
    fn name(&self) -> &'static str;
    /// Parses a received value into a binding, or says why it cannot.
    #[doc(hidden)]
    fn parse(&'static self, value: &str) -> Result<Staged, BaggageError>;
    /// [`parse`](Self::parse) where the error is not needed: the binding, or `None`.
    #[doc(hidden)]
    fn stage(&'static self, value: &str) -> Option<Staged>;
    /// The value bound in `context`, as text, if there is one.
    fn value_in(&self, context: &Context) -> Option<String>;
}

/// A parsed value, ready to bind.
#[doc(hidden)]
pub struct Staged(pub(crate) Leaf);

impl<K: BaggageKey> Claims for ContextVar<K> {
    fn key(&self) -> &'static str {
        K::KEY
    }

    fn name(&self) -> &'static str {
        ContextVar::name(self)
    }

    fn parse(&'static self, value: &str) -> Result<Staged, BaggageError> {
        match K::from_text(value) {
            Ok(parsed) => Ok(Staged(self.leaf(parsed))),
            Err(reason) => Err(BaggageError::BadValue {
                key: K::KEY.to_string(),
                var: ContextVar::name(self),
                value: excerpt(value),
                reason,
            }),
        }
    }

    fn stage(&'static self, value: &str) -> Option<Staged> {
        K::from_text(value)
            .ok()
            .map(|parsed| Staged(self.leaf(parsed)))
    }

    fn value_in(&self, context: &Context) -> Option<String> {
        context.get(self).map(K::to_text)
    }
}

/// One variable's claim on a baggage key, as submitted by `#[context_var(baggage = "…")]`,
/// with the module that declares it (for the message about a key claimed twice).
#[doc(hidden)]
pub struct Claim(pub(crate) &'static dyn Claims, pub(crate) &'static str);

impl Claim {
    /// The claim of `var`, declared in `module`.
    #[must_use]
    pub const fn new<K: BaggageKey>(var: &'static ContextVar<K>, module: &'static str) -> Claim {
        Claim(var, module)
    }
}

inventory::collect!(Claim);

/// The claims, by key, and the keys claimed by more than one variable.
pub(crate) struct Registry {
    /// The claimed keys with their claims, sorted by length: built once and searched on
    /// every received entry.
    keys: Vec<(&'static str, &'static dyn Claims)>,
    /// For each length up to the longest claimed key's, where the keys of that length are in
    /// `keys`. A lookup then compares the key with the few claimed keys of its length, which
    /// costs less than hashing it.
    by_length: Vec<(u32, u32)>,
    /// The claims, in the order of their keys, for writing.
    pub(crate) all: Vec<&'static dyn Claims>,
    /// A key claimed twice, and two of its claimants (`module::NAME`).
    pub(crate) conflict: Option<(&'static str, String, String)>,
}

impl Registry {
    /// The registry of `claims`, each with the module that declares its variable.
    fn new(claims: impl IntoIterator<Item = (&'static dyn Claims, &'static str)>) -> Registry {
        let mut by_key: HashMap<&'static str, (&'static dyn Claims, &'static str)> = HashMap::new();
        let mut conflict = None;
        for (claim, module) in claims {
            // Each declaration submits one claim; two that name one key conflict.
            if let Some((first, first_module)) = by_key.get(claim.key()) {
                let first = format!("{first_module}::{}", first.name());
                let second = format!("{module}::{}", claim.name());
                conflict.get_or_insert((claim.key(), first, second));
            } else {
                by_key.insert(claim.key(), (claim, module));
            }
        }
        let mut all: Vec<&'static dyn Claims> =
            by_key.into_values().map(|(claim, _)| claim).collect();
        all.sort_by_key(|claim| claim.key());
        let mut keys: Vec<_> = all.iter().map(|claim| (claim.key(), *claim)).collect();
        keys.sort_by_key(|(key, _)| key.len());
        let longest = keys.last().map_or(0, |(key, _)| key.len());
        // `by_length[n]`: where the keys of length `n` start and end, for `n` up to `longest`.
        let shorter = |n: usize| {
            let shorter = keys.partition_point(|(key, _)| key.len() < n);
            u32::try_from(shorter).expect("fewer than 4 billion claimed keys")
        };
        let by_length = (0..=longest)
            .map(|n| (shorter(n), shorter(n + 1)))
            .collect();
        Registry {
            keys,
            by_length,
            all,
            conflict,
        }
    }

    /// The claim on `key`, if a variable claims it.
    #[inline]
    pub(crate) fn claim(&self, key: &str) -> Option<&'static dyn Claims> {
        let &(from, to) = self.by_length.get(key.len())?;
        let of_length = self.keys.get(from as usize..to as usize)?;
        let (_, claim) = of_length
            .iter()
            .find(|(claimed, _)| same_text(claimed, key))?;
        Some(*claim)
    }
}

/// Whether two keys are the same. Keys are a few bytes, which a call to `memcmp` costs more
/// than: those of 4 to 8 bytes are compared as two 4-byte words (the first four bytes and the
/// last four, which overlap below 8), the others byte by byte.
#[inline]
fn same_text(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let word = |bytes: &[u8], at: usize| {
        bytes
            .get(at..at + 4)
            .and_then(|word| <[u8; 4]>::try_from(word).ok())
            .map(u32::from_ne_bytes)
    };
    match a.len() {
        4..=8 => {
            let last = a.len() - 4;
            word(a, 0) == word(b, 0) && word(a, last) == word(b, last)
        }
        _ => a.iter().zip(b).all(|(a, b)| a == b),
    }
}

pub(crate) fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        Registry::new(
            inventory::iter::<Claim>
                .into_iter()
                .map(|Claim(claim, module)| (*claim, *module)),
        )
    })
}

/// Panics if two variables claim one key: the server could not tell which to set.
#[track_caller]
pub(crate) fn assert_no_conflict() {
    if let Some((key, a, b)) = &registry().conflict {
        panic!(
            "contextvars: the baggage key `{key}` is claimed by two variables, `{a}` and `{b}`; \
             give each `#[context_var(baggage = \"...\")]` a key of its own"
        );
    }
}

/// The variables that claim a baggage key, with their keys: for diagnostics and tests.
///
/// ```
/// # use context_core as contextvars;
/// // With no `#[context_var(baggage = "…")]` in this program, nothing is claimed.
/// assert!(contextvars::baggage::claimed_keys().is_empty());
/// ```
#[must_use]
pub fn claimed_keys() -> Vec<(&'static str, &'static str)> {
    registry()
        .all
        .iter()
        .map(|claim| (claim.key(), claim.name()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claim on a key, never parsed: the look-up needs only its key, the first `len` bytes
    /// of `text`.
    #[derive(Clone, Copy)]
    struct KeyOnly {
        text: &'static str,
        len: usize,
    }

    const fn key_only(text: &'static str) -> KeyOnly {
        KeyOnly {
            text,
            len: text.len(),
        }
    }

    impl Claims for KeyOnly {
        fn key(&self) -> &'static str {
            &self.text[..self.len]
        }
        fn name(&self) -> &'static str {
            "KEY_ONLY"
        }
        fn parse(&'static self, _: &str) -> Result<Staged, BaggageError> {
            unreachable!("never parsed")
        }
        fn stage(&'static self, _: &str) -> Option<Staged> {
            unreachable!("never parsed")
        }
        fn value_in(&self, _: &Context) -> Option<String> {
            None
        }
    }

    /// Keys of every length from 1 to 20, each a prefix of the longer ones.
    static PREFIXES: [KeyOnly; 20] = {
        let mut keys = [key_only(""); 20];
        let mut at = 0;
        while at < 20 {
            keys[at] = KeyOnly {
                text: "abcdefghijklmnopqrst",
                len: at + 1,
            };
            at += 1;
        }
        keys
    };

    /// Keys of one length, keys that end as others do, a key that is a prefix of another.
    static OTHERS: [KeyOnly; 5] = [
        key_only("tenant"),
        key_only("tenant.id"),
        key_only("user.id"),
        key_only("user.ix"),
        key_only("xuser.id"),
    ];

    fn registry_of(claims: impl IntoIterator<Item = &'static KeyOnly>) -> Registry {
        Registry::new(
            claims
                .into_iter()
                .map(|claim| (claim as &'static dyn Claims, "tests")),
        )
    }

    #[test]
    fn a_key_finds_its_claim_and_no_other() {
        let registry = registry_of(PREFIXES.iter().chain(&OTHERS));
        let claimed: Vec<&str> = PREFIXES.iter().chain(&OTHERS).map(Claims::key).collect();
        for key in &claimed {
            assert_eq!(registry.claim(key).map(Claims::key), Some(*key));
        }
        let mut others: Vec<String> = vec![String::new(), "tenan".into(), "tenant.i".into()];
        for key in &claimed {
            others.push(format!("{key}x"));
            others.push(format!("x{key}"));
            others.push(key[..key.len() - 1].to_string());
            others.push(key[1..].to_string());
            for at in 0..key.len() {
                let mut other = key.as_bytes().to_vec();
                other[at] = b'_';
                others.push(String::from_utf8(other).unwrap());
            }
        }
        others.extend((21..=30).map(|n| "k".repeat(n)));
        for key in others.iter().filter(|key| !claimed.contains(&key.as_str())) {
            assert!(registry.claim(key).is_none(), "{key:?}");
        }
        assert!(registry_of([]).claim("a").is_none());
        assert!(registry_of([]).claim("").is_none());
    }

    #[test]
    fn a_key_claimed_twice_is_a_conflict() {
        static TWICE: [KeyOnly; 3] = [key_only("a"), key_only("b"), key_only("a")];
        assert!(registry_of(&TWICE[..2]).conflict.is_none());
        let registry = registry_of(&TWICE);
        assert_eq!(registry.conflict.map(|(key, ..)| key), Some("a"));
    }

    #[test]
    fn keys_are_the_same_only_byte_for_byte() {
        for len in 0..=12 {
            let key: String = "abcdefghijkl"[..len].to_string();
            assert!(same_text(&key, &key.clone()), "{key:?}");
            // A key that differs in any one byte, or in its length, is another key.
            for at in 0..len {
                let mut other = key.clone().into_bytes();
                other[at] = b'_';
                let other = String::from_utf8(other).unwrap();
                assert!(!same_text(&key, &other), "{key:?} {other:?}");
            }
            assert!(!same_text(&key, &format!("{key}x")), "{key:?}");
            assert!(!same_text(&format!("x{key}"), &key), "{key:?}");
        }
    }
}
