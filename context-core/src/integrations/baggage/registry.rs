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
    /// The claimed keys with the index of their claim in `all`, sorted by length: built once
    /// and searched on every received entry. A binary search on the length, then a look at
    /// the few keys of that length, costs less than hashing the key.
    keys: Vec<(&'static str, usize)>,
    /// The claims, in the order of their keys, for writing.
    pub(crate) all: Vec<&'static dyn Claims>,
    /// A key claimed twice, and two of its claimants (`module::NAME`).
    pub(crate) conflict: Option<(&'static str, String, String)>,
}

impl Registry {
    /// The claim on `key`, if a variable claims it.
    pub(crate) fn claim(&self, key: &str) -> Option<&'static dyn Claims> {
        let from = self
            .keys
            .partition_point(|(claimed, _)| claimed.len() < key.len());
        let (_, index) = self.keys[from..]
            .iter()
            .take_while(|(claimed, _)| claimed.len() == key.len())
            .find(|(claimed, _)| same_text(claimed, key))?;
        Some(self.all[*index])
    }
}

/// Whether two keys of one length are the same, compared byte by byte here: keys are a few
/// bytes, which a call to `memcmp` costs more than.
fn same_text(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(a, b)| a == b)
}

pub(crate) fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut by_key: HashMap<&'static str, (&'static dyn Claims, &'static str)> = HashMap::new();
        let mut conflict = None;
        for Claim(claim, module) in inventory::iter::<Claim> {
            // Each declaration submits one claim; two that name one key conflict.
            if let Some((first, first_module)) = by_key.get(claim.key()) {
                let first = format!("{first_module}::{}", first.name());
                let second = format!("{module}::{}", claim.name());
                conflict.get_or_insert((claim.key(), first, second));
            } else {
                by_key.insert(claim.key(), (*claim, *module));
            }
        }
        let mut all: Vec<&'static dyn Claims> =
            by_key.into_values().map(|(claim, _)| claim).collect();
        all.sort_by_key(|claim| claim.key());
        let mut keys: Vec<_> = all
            .iter()
            .enumerate()
            .map(|(index, claim)| (claim.key(), index))
            .collect();
        keys.sort_by_key(|(key, _)| key.len());
        Registry {
            keys,
            all,
            conflict,
        }
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
