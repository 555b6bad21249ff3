//! Tokens: the receipt of a `set`, used once to undo it.

use std::fmt;

use crate::map::Value;
use crate::var::{ContextVar, Key, downcast};

/// The receipt of [`ContextVar::set`]: pass it to [`ContextVar::reset`] to restore what the
/// variable was before that `set`.
///
/// A token belongs to one variable, which its type names (`Token<REQUEST_ID>`), so it cannot
/// reset another variable; `reset` takes it by value, so it cannot be used twice. Both are
/// compile errors. A token is `Send + Sync + 'static`: it can be held across `.await` and
/// moved between tasks, though only the context it was made in accepts it back.
///
/// Dropping a token without using it leaves the variable as it is.
///
/// ```
/// # use context_core as contextvars;
/// # use contextvars::{ContextVar, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct USER {}
/// # impl Key for USER { type Value = String; type Default = NoDefault; }
/// # static USER: ContextVar<USER> = ContextVar::new("user");
/// let first = USER.set("ann".to_string());
/// assert_eq!(first.old_value(), None); // it was unset: Python's `Token.MISSING`
/// let second = USER.set("bob".to_string());
/// assert_eq!(second.old_value().map(String::as_str), Some("ann"));
/// assert_eq!(second.var().name(), "user");
/// # USER.reset(second).unwrap();
/// # USER.reset(first).unwrap();
/// ```
#[must_use = "a token does nothing unless passed to `reset`; use `scoped` for a value that \
              should be undone at the end of a block"]
pub struct Token<K: Key> {
    var: &'static ContextVar<K>,
    pub(crate) context: u64,
    /// The value before the `set`, as the map stores it (a `K::Value`): kept untyped, so that
    /// `set` and `reset` pass it along without a type check.
    pub(crate) old: Option<Value>,
}

impl<K: Key> Token<K> {
    pub(crate) fn new(var: &'static ContextVar<K>, context: u64, old: Option<Value>) -> Self {
        Token { var, context, old }
    }

    pub(crate) fn into_parts(self) -> (u64, Option<Value>) {
        (self.context, self.old)
    }

    /// The variable this token resets.
    #[must_use]
    pub fn var(&self) -> &'static ContextVar<K> {
        self.var
    }

    /// The value before the `set`, or `None` if the variable was unset then (the default, if
    /// any, does not count).
    #[must_use]
    pub fn old_value(&self) -> Option<&K::Value> {
        self.old.as_ref().map(downcast::<K::Value>)
    }
}

impl<K: Key> fmt::Debug for Token<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Old<'a, K: Key>(&'a K::Value);
        impl<K: Key> fmt::Debug for Old<'_, K> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                K::fmt_value(self.0, f)
            }
        }
        f.debug_struct("Token")
            .field("var", &self.var.name())
            .field("old_value", &self.old_value().map(Old::<K>))
            .finish_non_exhaustive()
    }
}
