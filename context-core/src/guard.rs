//! Scope guards: a `set` undone when the guard drops.

use std::fmt;

use crate::current;
use crate::error::SetError;
use crate::map::Map;

/// Undoes a [`ContextVar::scoped`](crate::ContextVar::scoped) when dropped (B15).
///
/// Dropping the guard restores the bindings of its context as they were when the guard was
/// made, on normal exit and when unwinding from a panic. Guards unwind like a stack: dropping
/// an outer guard also undoes the inner ones, which then do nothing.
///
/// A guard is `Send + 'static`, so it can be held across `.await` in a spawned task. It must
/// be dropped in the context it was made in (B16): the same task, thread or
/// [`Context::run`](crate::Context::run) closure. Dropped anywhere else it changes nothing and
/// panics with a message that says so, unless the thread is already panicking, in which case
/// it only changes nothing (a panic during unwinding would abort the process).
///
/// ```
/// # use context_core::{ContextVar, Key, NoDefault};
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
#[must_use = "the value is reset as soon as the guard is dropped; bind it with `let _guard = ...`"]
pub struct ScopeGuard {
    var: &'static str,
    context: u64,
    /// This guard's entry in its context's `Frame::guards`.
    serial: u64,
    /// The bindings to restore; `None` for a guard that restores nothing.
    saved: Option<Map>,
}

impl ScopeGuard {
    pub(crate) fn new(var: &'static str, context: u64, serial: u64, saved: Map) -> Self {
        ScopeGuard {
            var,
            context,
            serial,
            saved: Some(saved),
        }
    }

    /// A guard that does nothing when dropped (made where no context is left to change).
    pub(crate) fn inert(var: &'static str) -> Self {
        ScopeGuard {
            var,
            context: 0,
            serial: 0,
            saved: None,
        }
    }
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        let Some(saved) = self.saved.take() else {
            return;
        };
        // Whatever the closure hands back is dropped after it, with the thread state
        // released, so that a value's `Drop` may use context variables. In a task outside any
        // context no frame is visible: that is a different context too.
        let outcome = current::write(self.var, |frame| {
            if frame.id != self.context {
                return Err(saved);
            }
            let Some(guards) = frame.guards.as_mut() else {
                return Ok(saved);
            };
            let Some(place) = guards.live.iter().rposition(|&s| s == self.serial) else {
                // An outer guard dropped first and already undid this one.
                return Ok(saved);
            };
            // Undoing this guard undoes the ones made after it, live or not.
            guards.live.truncate(place);
            Ok(std::mem::replace(&mut frame.map, saved))
        });
        match outcome {
            Ok(Ok(_)) | Err(SetError::ThreadExiting { .. }) => {}
            Ok(Err(_)) | Err(_) if std::thread::panicking() => {}
            Ok(Err(_)) | Err(_) => panic!(
                "contextvars: the scope guard of `{}` was dropped in a different context than \
                 it was created in (another task, thread or `Context::run` closure); it \
                 changed nothing. Drop guards where they were made, or use `set`/`reset`",
                self.var
            ),
        }
    }
}

impl fmt::Debug for ScopeGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopeGuard")
            .field("var", &self.var)
            .finish_non_exhaustive()
    }
}
