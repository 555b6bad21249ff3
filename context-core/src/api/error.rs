//! The errors of context variables. Each says what happened and what to do about it.

use std::error::Error;
use std::fmt;

use crate::current::Unwritable;

/// A variable without a default was read where it is not set.
///
/// Returned by [`ContextVar::try_get`](crate::ContextVar::try_get), the Rust form of Python's
/// `LookupError`.
///
/// ```
/// # use context_core as contextvars;
/// # use contextvars::{ContextVar, Key, NoDefault};
/// # struct REQUEST_ID {}
/// # impl Key for REQUEST_ID { type Value = String; type Default = NoDefault; }
/// # static REQUEST_ID: ContextVar<REQUEST_ID> = ContextVar::new("request_id");
/// let err = REQUEST_ID.try_get().unwrap_err();
/// assert_eq!(err.var(), "request_id");
/// assert!(err.to_string().contains("`request_id` is not set"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupError {
    pub(crate) var: &'static str,
}

impl LookupError {
    /// The name of the variable that was read.
    #[must_use]
    pub fn var(&self) -> &'static str {
        self.var
    }
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "context variable `{}` is not set in the current context and has no default; \
             set it before this point, or read it with `get()` (an `Option`) or `get_or(..)`",
            self.var
        )
    }
}

impl Error for LookupError {}

/// Why a [`Token`](crate::Token) did not reset its variable. Nothing was changed.
///
/// ```
/// # use context_core as contextvars;
/// # use contextvars::{Context, ContextVar, Key, NoDefault, ResetError};
/// # struct USER {}
/// # impl Key for USER { type Value = String; type Default = NoDefault; }
/// # static USER: ContextVar<USER> = ContextVar::new("user");
/// let token = Context::new().run(|| USER.set("ann".to_string()));
/// // The token belongs to the context it was made in, not to this one.
/// let err = USER.reset(token).unwrap_err();
/// assert!(matches!(err, ResetError::OtherContext { var: "user" }));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResetError {
    /// The token was made in another context (another `Context` value, task or thread).
    OtherContext {
        /// The variable's name.
        var: &'static str,
    },
    /// The reset ran in a tokio task that runs outside any context, where no token can
    /// have been made.
    NoContext {
        /// The variable's name.
        var: &'static str,
    },
    /// The thread is exiting and its context is already gone.
    ThreadExiting {
        /// The variable's name.
        var: &'static str,
    },
}

impl fmt::Display for ResetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResetError::OtherContext { var } => write!(
                f,
                "token for context variable `{var}` was created in a different context; \
                 reset it in the context (task, thread or `Context::run` closure) that set it"
            ),
            ResetError::NoContext { var } => write!(
                f,
                "cannot reset context variable `{var}`: this tokio task runs outside any \
                 context, so the token cannot belong to it"
            ),
            ResetError::ThreadExiting { var } => write!(
                f,
                "cannot reset context variable `{var}`: this thread is exiting and its context \
                 has been torn down"
            ),
        }
    }
}

impl Error for ResetError {}

/// A variable could not be set because there is no context to set it in.
///
/// Returned by [`ContextVar::try_set`](crate::ContextVar::try_set);
/// [`ContextVar::set`](crate::ContextVar::set) panics with the same message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SetError {
    /// A tokio task spawned without a context (plain `tokio::spawn`, a server's connection
    /// task, where a middleware outside the tower layer runs, a shared worker such as
    /// `Buffer`'s) has no context of its own; the thread's context belongs to whichever task
    /// ran there last, so writing to it would leak the value into other tasks.
    ///
    /// The fix: spawn the task with [`contextvars::spawn`](crate::spawn) (or
    /// `spawn_blocking`, `spawn_local`), wrap its future with
    /// [`.in_current_context()`](crate::FutureExt::in_current_context) or
    /// [`.with_context(ctx)`](crate::FutureExt::with_context), set the variable for a part of
    /// the code with [`scope`](crate::ContextVar::scope), or, in a server, set it behind the
    /// tower layer `contextvars::tower::ContextLayer`, which gives every request a context of
    /// its own: a middleware that sets variables must run inside that layer (with axum, the
    /// last `.layer()` call adds the outermost layer, so `ContextLayer` comes last), and a
    /// shared worker such as tower's `Buffer` needs `contextvars::tower::AcrossWorkerLayer`.
    NoContext {
        /// The variable's name.
        var: &'static str,
    },
    /// A task spawned with plain `tokio::spawn` on a runtime with the hooks of
    /// `contextvars::hooks` (a server's connection task, say) inherits its spawner's values
    /// for reading only. It cannot tell which of the requests it serves a value would belong
    /// to (one keep-alive connection serves many users' requests), so writes need a context
    /// the code entered: the fixes are those of [`NoContext`](Self::NoContext).
    Inherited {
        /// The variable's name.
        var: &'static str,
    },
    /// The thread is exiting and its context is already gone.
    ThreadExiting {
        /// The variable's name.
        var: &'static str,
    },
}

impl fmt::Display for SetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetError::NoContext { var } => write!(
                f,
                "cannot set `{var}`: this tokio task has no context (spawned with plain \
                 `tokio::spawn`?).\nFix: spawn it with `contextvars::spawn`, or set it inside \
                 `{var}.scope(value, fut)`; in a server, inside \
                 `contextvars::tower::ContextLayer` (with axum, the last `.layer()` call).\n\
                 More: the docs of `contextvars::SetError::NoContext`."
            ),
            SetError::Inherited { var } => write!(
                f,
                "cannot set `{var}`: this task inherited its spawner's context for reading only \
                 (plain `tokio::spawn` under `contextvars::hooks`).\nFix: spawn it with \
                 `contextvars::spawn`, or set it inside `{var}.scope(value, fut)`; in a server, \
                 inside `contextvars::tower::ContextLayer` (with axum, the last `.layer()` call).\n\
                 More: the docs of `contextvars::SetError::Inherited`."
            ),
            SetError::ThreadExiting { var } => write!(
                f,
                "cannot set context variable `{var}`: this thread is exiting and its context \
                 has been torn down"
            ),
        }
    }
}

impl Error for SetError {}

impl SetError {
    /// The error for a `set` of `var` where the engine found no frame to write to.
    pub(crate) fn new(why: Unwritable, var: &'static str) -> Self {
        match why {
            Unwritable::NoContext => SetError::NoContext { var },
            Unwritable::Inherited => SetError::Inherited { var },
            Unwritable::ThreadExiting => SetError::ThreadExiting { var },
        }
    }
}
