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

impl fmt::Display for SetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetError::NoContext { var } => write!(
                f,
                "cannot set context variable `{var}`: this tokio task runs outside any context. \
                 While serving a request, the likely cause is code that runs outside the \
                 `contextvars` tower layer: a middleware placed outside `ContextLayer` (with axum, one added by a \
                 later `.layer()` call, such as a `from_fn` middleware: the last `.layer()` is \
                 the outermost, and `ContextLayer` must be), or a service behind a shared worker \
                 such as tower's `Buffer` (wrap the worker's layer in \
                 `contextvars::tower::AcrossWorkerLayer`). In a task spawned with plain \
                 `tokio::spawn` or `tokio::task::spawn_blocking`: spawn it with \
                 `contextvars::spawn` (or `contextvars::spawn_blocking`), wrap its future with \
                 `.in_current_context()` or `.with_context(ctx)`, or use \
                 `{var}.scope(value, fut)`"
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
            Unwritable::ThreadExiting => SetError::ThreadExiting { var },
        }
    }
}
