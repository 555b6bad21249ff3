//! Which variables claim which baggage keys.
//!
//! `#[context_var(baggage = "tenant")]` implements [`BaggageKey`] for the variable's key type
//! and submits a [`Claim`] to an `inventory` collection, so every variable declared so
//! anywhere in the program (any crate of it) is known at run time without a list to keep up
//! to date. The collection is read once, on the first need.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;
use std::sync::OnceLock;

use crate::context::Context;
use crate::map::Leaf;
use crate::var::{ContextVar, Key};

use super::error::BaggageError;
use super::header::excerpt;

/// What a variable propagated as baggage must be: written with `Display`, read back with
/// `FromStr`, whose error says what is wrong with `Display`. The lifetime lets generated
/// code write the bound higher-ranked (see `SendSyncStatic` in the facade).
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "a variable propagated as baggage must have a value that is `Display + FromStr`, and `{Self}` is not",
    label = "not `Display + FromStr` (with an error that is `Display`)",
    note = "the value crosses the hop as text: it is written with `Display` and read back with \
            `FromStr`; wrap the type in a newtype that implements both"
)]
pub trait BaggageValue<'a>: Display + FromStr<Err: Display> {}

#[diagnostic::do_not_recommend]
impl<T: Display + FromStr<Err: Display>> BaggageValue<'_> for T {}

/// A variable's baggage key, implemented by `#[context_var(baggage = "…")]`.
#[doc(hidden)]
pub trait BaggageKey: Key<Value: for<'a> BaggageValue<'a>> {
    /// The key in the `baggage` header.
    const KEY: &'static str;
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
        match value.parse::<K::Value>() {
            Ok(parsed) => Ok(Staged(self.leaf(parsed))),
            Err(err) => Err(BaggageError::BadValue {
                key: K::KEY.to_string(),
                var: ContextVar::name(self),
                value: excerpt(value),
                reason: err.to_string(),
            }),
        }
    }

    fn value_in(&self, context: &Context) -> Option<String> {
        context.get(self).map(ToString::to_string)
    }
}

/// One variable's claim on a baggage key, as submitted by `#[context_var(baggage = "…")]`.
#[doc(hidden)]
pub struct Claim(pub(crate) &'static dyn Claims);

impl Claim {
    /// The claim of `var`.
    #[must_use]
    pub const fn new<K: BaggageKey>(var: &'static ContextVar<K>) -> Claim {
        Claim(var)
    }
}

inventory::collect!(Claim);

/// The claims, by key, and the keys claimed by more than one variable.
pub(crate) struct Registry {
    pub(crate) by_key: HashMap<&'static str, &'static dyn Claims>,
    /// Claims in declaration order of discovery, for writing.
    pub(crate) all: Vec<&'static dyn Claims>,
    /// A key claimed twice, and the names of two of its claimants.
    pub(crate) conflict: Option<(&'static str, &'static str, &'static str)>,
}

pub(crate) fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut registry = Registry {
            by_key: HashMap::new(),
            all: Vec::new(),
            conflict: None,
        };
        for Claim(claim) in inventory::iter::<Claim> {
            // Each declaration submits one claim; two that name one key conflict.
            if let Some(first) = registry.by_key.insert(claim.key(), *claim) {
                registry
                    .conflict
                    .get_or_insert((claim.key(), first.name(), claim.name()));
            } else {
                registry.all.push(*claim);
            }
        }
        registry.all.sort_by_key(|claim| claim.key());
        registry
    })
}

/// Panics if two variables claim one key: the server could not tell which to set.
#[track_caller]
pub(crate) fn assert_no_conflict() {
    if let Some((key, a, b)) = registry().conflict {
        panic!(
            "contextvars: the baggage key `{key}` is claimed by two variables, `{a}` and `{b}`; \
             give each `#[context_var(baggage = \"...\")]` a key of its own"
        );
    }
}

/// The variables that claim a baggage key, with their keys: for diagnostics and tests.
///
/// ```
/// // With no `#[context_var(baggage = "…")]` in this program, nothing is claimed.
/// assert!(context_core::baggage::claimed_keys().is_empty());
/// ```
#[must_use]
pub fn claimed_keys() -> Vec<(&'static str, &'static str)> {
    registry()
        .all
        .iter()
        .map(|claim| (claim.key(), claim.name()))
        .collect()
}
