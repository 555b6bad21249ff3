//! Nested layers: where a request's context starts. Every layer of this module marks the
//! context it runs a request in with a binding of its own, `contextvars.tower.request`; a
//! `ContextLayer` called inside another layer's request (directly, or through any task or
//! thread that request's context went to) builds on the outer request's context instead of
//! its base.

use crate::context::Context;
use crate::map::CopyProof;
use crate::var::{ContextVar, Key, NoDefault};

/// The key of [`IN_REQUEST`].
struct InRequest {}

impl Key for InRequest {
    type Value = ();
    type Default = NoDefault;
    const HIDDEN: bool = true;

    /// Held in place: the mark allocates nothing, and a request whose values are all held in
    /// place has none with a `Drop` to run when it ends.
    fn copy_proof() -> Option<CopyProof<()>> {
        Some(CopyProof::new())
    }
}

/// Marks a request's context, as a layer of this module enters it: a `ContextLayer` called
/// where the current context has it (from the outer service's `call` or its response future,
/// or from a task or a thread the request's context flowed to) builds on that context instead
/// of its base. A binding rather than a flag of the thread or task, so it goes wherever the
/// context goes (`contextvars::spawn`, `spawn_local`, `spawn_blocking`, `in_current_context`,
/// the runtime hooks) and nowhere else, whichever thread polls, and nothing has to be undone
/// when a call or a poll panics or a request future is dropped.
static IN_REQUEST: ContextVar<InRequest> = ContextVar::new("contextvars.tower.request");

/// `context`, marked as a request's (each request of a layer starts from a copy of it).
pub(super) fn marked(context: Context) -> Context {
    context.with_value(&IN_REQUEST, ())
}

/// The context a new request starts in: a copy of the request context it is called in, if
/// an outer layer entered one, else a copy of `base` (marked).
pub(super) fn request_context(base: &Context) -> Context {
    if IN_REQUEST.is_set() {
        Context::current()
    } else {
        base.clone()
    }
}

/// `context` as a request's: marked, unless it is already. A context carried past a worker by
/// hand (not from a `ContextLayer`'s request) is a request's below the worker too: a layer
/// there builds on it.
pub(super) fn as_request(context: Context) -> Context {
    if context.contains(&IN_REQUEST) {
        context
    } else {
        marked(context)
    }
}
