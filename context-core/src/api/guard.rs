//! Scope guards: a `set` undone when the guard drops.

use std::fmt;

use crate::current::NO_CONTEXT;
use crate::error::ResetError;
use crate::map::{Value, VarMeta};
use crate::var::restore;

/// Undoes a [`ContextVar::scoped`](crate::ContextVar::scoped) when dropped.
///
/// Dropping the guard restores **its own variable** to what it was before the `scoped` call,
/// exactly like passing a [`Token`](crate::Token) to [`reset`](crate::ContextVar::reset): on
/// normal exit and when unwinding from a panic. Sets of other variables made while the guard
/// lived are left alone, so a guard never undoes a sibling's work: under `tokio::select!`,
/// the losing branch's guard is dropped when the winner completes, and the winner's sets
/// stay. Guards of one variable dropped out of order each restore their own old value, as
/// tokens reset out of order do.
///
/// A guard is `Send + 'static`, so it can be held across `.await` in a spawned task. It must
/// be dropped in the context it was made in: the same task, thread or
/// [`Context::run`](crate::Context::run) closure. Dropped anywhere else it changes nothing and
/// panics with a message that says so, unless the thread is already panicking, in which case
/// it only changes nothing (a panic during unwinding would abort the process).
///
/// `let _ = V.scoped(value);` drops the guard at once, so the value is reset on the same
/// line: bind it to a named variable (`let _guard = …`), or use
/// [`sync_scope`](crate::ContextVar::sync_scope) / [`scope`](crate::ContextVar::scope), which
/// cannot be misused that way. An unused guard is a warning (`#[must_use]`), but `let _ =`
/// silences it, and the help rustc prints under that warning suggests `let _ = ...`: for a
/// guard, do not follow it. No lint tells `let _ = V.scoped(value)` apart from the harmless
/// `let _ = V.set(value)` (the value then stays until the context ends).
///
/// ```
/// # use context_core as contextvars;
/// # use contextvars::{ContextVar, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct TENANT {}
/// # impl Key for TENANT { type Value = u32; type Default = NoDefault; }
/// # static TENANT: ContextVar<TENANT> = ContextVar::new("tenant");
/// let outer = TENANT.scoped(1);
/// let inner = TENANT.scoped(2);
/// assert_eq!(TENANT.get(), Some(2));
/// drop(inner);
/// assert_eq!(TENANT.get(), Some(1));
/// drop(outer);
/// assert_eq!(TENANT.get(), None);
/// ```
#[must_use = "the guard resets the variable when it is dropped: keep it in a named binding, \
              `let _guard = var.scoped(..)`, for as long as the value must hold, or use \
              `var.sync_scope(..)`/`var.scope(..)`; `let _ = var.scoped(..)` drops it, and \
              resets the value, on the same line"]
pub struct ScopeGuard {
    var: &'static dyn VarMeta,
    key: u32,
    /// The context the `set` was made in; `NO_CONTEXT` where none was left (thread exit):
    /// such a guard restores nothing.
    context: u64,
    /// What the variable was before; taken when the guard drops.
    old: Option<Value>,
}

impl ScopeGuard {
    pub(crate) fn new(
        var: &'static dyn VarMeta,
        key: u32,
        context: u64,
        old: Option<Value>,
    ) -> Self {
        ScopeGuard {
            var,
            key,
            context,
            old,
        }
    }
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        if self.context == NO_CONTEXT {
            return;
        }
        match restore(self.var, self.key, self.context, self.old.take()) {
            Ok(()) | Err(ResetError::ThreadExiting { .. }) => {}
            Err(ResetError::OtherContext { .. } | ResetError::NoContext { .. })
                if std::thread::panicking() => {}
            Err(ResetError::OtherContext { .. } | ResetError::NoContext { .. }) => panic!(
                "contextvars: the scope guard of `{}` was dropped in a different context than \
                 it was created in (another task, thread or `Context::run` closure); it \
                 changed nothing. Drop guards where they were made, or use `set`/`reset`",
                self.var.name()
            ),
        }
    }
}

impl fmt::Debug for ScopeGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopeGuard")
            .field("var", &self.var.name())
            .finish_non_exhaustive()
    }
}
