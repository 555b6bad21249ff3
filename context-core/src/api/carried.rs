//! What a context carries besides its variables: the `tracing` span (feature `tracing`) and
//! OpenTelemetry's context (feature `opentelemetry`) that were current where it was taken,
//! once the application turns that on (`contextvars::tracing::carry_spans`,
//! `contextvars::opentelemetry::carry_context`).
//!
//! A context holds them in the root of its bindings' map, not among the bindings: the mapping
//! view never sees them, and a `Context` stays as small as without the features. A snapshot
//! shares its parent's root, as before, wherever it carries what the root carries already (the
//! span a context entered, still current); only a snapshot that must carry something else
//! copies the root, never the nodes below it. `Context::current()` settles that
//! ([`recarry`]), clones share it, and entering a context enters it ([`Carried::enter`]) until
//! it is left. A context whose root carries something has a bit set in its id (see
//! `Frame::carries`), which is all that entering any context checks. A task that
//! `contextvars::spawn` starts in a span its context does not carry holds the span itself
//! ([`TaskSpan`]), so that such a spawn copies no root.
//!
//! While nothing was turned on, a snapshot (and so a spawn) pays one relaxed load and its
//! test, and `Context::run` a check of that bit; without the features, not even that. A poll
//! of a wrapped future checks the bit only when it has no good read-cache stamp (its first
//! poll on a thread): a context that carries something keeps none (see `LastPoll`). A task
//! that `contextvars::spawn` starts while nothing is carried is of a type whose polls check
//! nothing (`Finishing<_, CarriesNothing>`); one whose context carries something is a
//! `Carrying`. The switches only ever go on.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::map::Map;

/// `carry_spans` was called.
#[cfg(feature = "tracing")]
const SPANS: u8 = 1;
/// `carry_context` was called.
#[cfg(feature = "opentelemetry")]
const OTEL: u8 = 2;

/// A context was made to carry OpenTelemetry's context explicitly (an extracted context), so
/// that some context may carry something though neither switch is on.
#[cfg(all(feature = "opentelemetry", feature = "baggage"))]
const EXPLICIT: u8 = 4;

/// What snapshots carry: a set of the bits above, which are only ever added.
static CARRY: AtomicU8 = AtomicU8::new(0);

/// What snapshots carry now; nothing, without the features (no load at all).
#[inline]
fn carry() -> u8 {
    if cfg!(any(feature = "tracing", feature = "opentelemetry")) {
        CARRY.load(Ordering::Relaxed)
    } else {
        0
    }
}

/// Whether any context may carry anything: something was turned on. Until then no context
/// carries anything, and the hot paths look no further.
#[allow(clippy::inline_always)]
#[inline(always)]
pub(crate) fn any() -> bool {
    carry() != 0
}

/// Turns on carrying the span in every snapshot taken from now on.
#[cfg(feature = "tracing")]
pub(crate) fn carry_spans() {
    CARRY.fetch_or(SPANS, Ordering::Relaxed);
}

/// Turns on carrying OpenTelemetry's context in every snapshot taken from now on.
#[cfg(feature = "opentelemetry")]
pub(crate) fn carry_otel() {
    CARRY.fetch_or(OTEL, Ordering::Relaxed);
}

/// Records that a context is made to carry OpenTelemetry's context explicitly.
#[cfg(all(feature = "opentelemetry", feature = "baggage"))]
fn carry_explicitly() {
    CARRY.fetch_or(EXPLICIT, Ordering::Relaxed);
}

/// `map`, a snapshot of the current bindings, carrying what is current here of what is turned
/// on: its root is copied only if it carries something else.
#[inline]
pub(crate) fn recarry(map: Map) -> Map {
    let carry = carry();
    if carry == 0 {
        map
    } else {
        recarry_turned_on(map, carry)
    }
}

#[inline(never)]
fn recarry_turned_on(mut map: Map, carry: u8) -> Map {
    if suppressed() {
        if map.carried().is_some() {
            map.set_carried(Carried::NONE);
        }
        return map;
    }
    let carried = map.carried();
    if let Some(other) = Carried::capture_unless_same(carried, carry) {
        map.set_carried(other);
    }
    map
}

#[cfg(any(feature = "tracing", feature = "opentelemetry"))]
thread_local! {
    /// Set while `contextvars::hooks::suppress_flow` runs its closure on this thread:
    /// snapshots taken then carry nothing, whatever span or OpenTelemetry context is current.
    static SUPPRESSED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether snapshots taken here carry nothing (see [`suppress`]).
fn suppressed() -> bool {
    #[cfg(any(feature = "tracing", feature = "opentelemetry"))]
    {
        SUPPRESSED.try_with(std::cell::Cell::get).unwrap_or(false)
    }
    #[cfg(not(any(feature = "tracing", feature = "opentelemetry")))]
    {
        false
    }
}

/// Makes the snapshots taken on this thread carry nothing until the result drops, however
/// the code in between ends; then they carry what they did before. `suppress_flow`'s tasks
/// so inherit no span and no OpenTelemetry context, as they inherit no values.
#[cfg_attr(not(feature = "hooks"), allow(dead_code))]
pub(crate) fn suppress() -> Suppressed {
    #[cfg(any(feature = "tracing", feature = "opentelemetry"))]
    let before = SUPPRESSED
        .try_with(|cell| cell.replace(true))
        .unwrap_or(false);
    #[cfg(not(any(feature = "tracing", feature = "opentelemetry")))]
    let before = false;
    Suppressed { before }
}

/// What [`suppress`] returns: restores what snapshots carried before, when dropped.
pub(crate) struct Suppressed {
    #[cfg_attr(
        not(any(feature = "tracing", feature = "opentelemetry")),
        allow(dead_code)
    )]
    before: bool,
}

impl Drop for Suppressed {
    fn drop(&mut self) {
        #[cfg(any(feature = "tracing", feature = "opentelemetry"))]
        let _ = SUPPRESSED.try_with(|cell| cell.set(self.before));
    }
}

/// The span and OpenTelemetry context a context carries (each `None` where it carries none).
#[derive(Clone, Default)]
pub(crate) struct Carried {
    #[cfg(feature = "tracing")]
    span: Option<std::sync::Arc<span::CarriedSpan>>,
    #[cfg(feature = "opentelemetry")]
    otel: Option<::opentelemetry::Context>,
}

impl Carried {
    /// Nothing carried.
    pub(crate) const NONE: Carried = Carried {
        #[cfg(feature = "tracing")]
        span: None,
        #[cfg(feature = "opentelemetry")]
        otel: None,
    };

    /// OpenTelemetry's context `otel`, and no span.
    #[cfg(all(feature = "opentelemetry", feature = "baggage"))]
    pub(crate) fn otel(otel: ::opentelemetry::Context) -> Carried {
        carry_explicitly();
        Carried {
            otel: Some(otel),
            ..Carried::NONE
        }
    }

    /// What is carried here but the span, if there is a span (`None`: nothing to change).
    #[cfg(all(feature = "tracing", feature = "hooks"))]
    pub(crate) fn without_span(&self) -> Option<Carried> {
        self.span.as_ref()?;
        Some(Carried {
            span: None,
            ..self.clone()
        })
    }

    /// What is current here, of what is turned on (`carry`), unless it is what `carried`
    /// holds already (`None` then: nothing to change).
    #[cfg_attr(
        not(any(feature = "tracing", feature = "opentelemetry")),
        allow(unused_variables)
    )]
    fn capture_unless_same(carried: &Carried, carry: u8) -> Option<Carried> {
        #[cfg(feature = "tracing")]
        let span = if carry & SPANS == 0 {
            None
        } else {
            span::current(carried.span.as_ref())
        };
        #[cfg(feature = "tracing")]
        #[allow(unused_mut)]
        let mut same = match (&span, &carried.span) {
            (None, None) => true,
            (Some(span), Some(carried)) => std::sync::Arc::ptr_eq(span, carried),
            _ => false,
        };
        #[cfg(not(feature = "tracing"))]
        #[allow(unused_mut)]
        let mut same = true;
        #[cfg(feature = "opentelemetry")]
        let otel = (carry & OTEL != 0).then(::opentelemetry::Context::current);
        // OpenTelemetry's contexts cannot be compared: one carried is taken again.
        #[cfg(feature = "opentelemetry")]
        {
            same &= otel.is_none() && carried.otel.is_none();
        }
        (!same).then_some(Carried {
            #[cfg(feature = "tracing")]
            span,
            #[cfg(feature = "opentelemetry")]
            otel,
        })
    }

    /// Whether there is anything to enter.
    #[allow(clippy::inline_always)]
    #[cfg_attr(
        not(any(feature = "tracing", feature = "opentelemetry")),
        allow(clippy::unused_self)
    )]
    #[inline(always)]
    pub(crate) fn is_some(&self) -> bool {
        #[allow(unused_mut)]
        let mut some = false;
        #[cfg(feature = "tracing")]
        {
            some |= self.span.is_some();
        }
        #[cfg(feature = "opentelemetry")]
        {
            some |= self.otel.is_some();
        }
        some
    }

    /// Enters the span and attaches OpenTelemetry's context, until the result drops, which
    /// must happen on this thread, after what was entered since has been left (as with
    /// `Span::enter` and `Context::attach`). Out of line: most contexts carry nothing.
    #[cfg_attr(
        not(any(feature = "tracing", feature = "opentelemetry")),
        allow(clippy::unused_self)
    )]
    #[inline(never)]
    pub(crate) fn enter(&self) -> Entered {
        Entered {
            #[cfg(feature = "tracing")]
            span: self.span.as_ref().map(span::enter),
            #[cfg(feature = "opentelemetry")]
            otel: self.otel.clone().map(::opentelemetry::Context::attach),
            _not_send: std::marker::PhantomData,
        }
    }

    /// Enters the span alone, around the drop of a context's values, until the result drops.
    /// OpenTelemetry's context is not attached: a context may be dropped inside
    /// OpenTelemetry's own code (a propagator's `inject` drops one while OpenTelemetry's
    /// current context is borrowed), where attaching panics. Nor is a span entered for a drop
    /// that happens while the subscriber is entering or exiting one for another drop on this
    /// thread (its `on_enter` or `on_exit` dropping a context), which could otherwise go on
    /// without end.
    #[cfg_attr(not(feature = "tracing"), allow(clippy::unused_self))]
    pub(crate) fn enter_span_for_drop(&self) -> Option<DropInSpan> {
        #[cfg(feature = "tracing")]
        {
            let span = self.span.as_ref()?;
            if DROPPING_IN_SPAN.try_with(|cell| cell.replace(true)) != Ok(false) {
                return None;
            }
            // Cleared once entered, and should the subscriber's `on_enter` panic.
            let _unset = UnsetDropping;
            Some(DropInSpan {
                span: span::enter(span),
                _not_send: std::marker::PhantomData,
            })
        }
        #[cfg(not(feature = "tracing"))]
        None
    }
}

#[cfg(feature = "tracing")]
thread_local! {
    /// Set while the subscriber enters or exits a span for a drop on this thread (see
    /// [`Carried::enter_span_for_drop`]).
    static DROPPING_IN_SPAN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Clears [`DROPPING_IN_SPAN`] when dropped, however the subscriber's code it guards ends.
#[cfg(feature = "tracing")]
struct UnsetDropping;

#[cfg(feature = "tracing")]
impl Drop for UnsetDropping {
    fn drop(&mut self) {
        let _ = DROPPING_IN_SPAN.try_with(|cell| cell.set(false));
    }
}

/// The span entered around a context's values' drop: exits it when dropped. Not `Send`: it
/// must drop where it was made.
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) struct DropInSpan {
    #[cfg(feature = "tracing")]
    span: std::sync::Arc<span::CarriedSpan>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for DropInSpan {
    fn drop(&mut self) {
        #[cfg(feature = "tracing")]
        {
            let nested = DROPPING_IN_SPAN.try_with(|cell| cell.replace(true)) != Ok(false);
            let _unset = (!nested).then_some(UnsetDropping);
            span::exit(&self.span);
        }
    }
}

/// The span a task spawned by `contextvars::spawn` carries in itself rather than in its
/// context: the current span, where spans alone are carried and the snapshot carries
/// nothing yet (a spawn in a span entered by hand, such as a request's). The task's future
/// holds the handle, as `.in_current_span()` would, so the spawn allocates nothing more, and
/// enters the span around every poll; the task's context then carries nothing, and a
/// snapshot taken inside the task takes the span as any other snapshot does.
#[cfg(all(feature = "tracing", feature = "tokio"))]
pub(crate) struct TaskSpan(span::CarriedSpan);

#[cfg(all(feature = "tracing", feature = "tokio"))]
impl TaskSpan {
    /// The current span, for a task whose snapshot is `map`; `None` where the snapshot is to
    /// carry what it must itself ([`recarry`]): something else is carried, or there is no
    /// span.
    #[inline]
    pub(crate) fn for_spawn(map: &Map) -> Option<TaskSpan> {
        if carry() != SPANS || map.carried().is_some() || suppressed() {
            return None;
        }
        span::handle().map(TaskSpan)
    }

    /// Enters the span until the result drops, on this thread.
    #[inline]
    pub(crate) fn enter(&self) -> TaskSpanEntered<'_> {
        self.0.dispatch.enter(&self.0.id);
        TaskSpanEntered(self)
    }
}

/// [`TaskSpan::enter`]: exits the span when dropped.
#[cfg(all(feature = "tracing", feature = "tokio"))]
pub(crate) struct TaskSpanEntered<'a>(&'a TaskSpan);

#[cfg(all(feature = "tracing", feature = "tokio"))]
impl Drop for TaskSpanEntered<'_> {
    #[inline]
    fn drop(&mut self) {
        let span = &(self.0).0;
        span.dispatch.exit(&span.id);
    }
}

/// While alive, the span of a context is entered and its OpenTelemetry context attached, on
/// this thread. Not `Send`: it must drop where it was made.
pub(crate) struct Entered {
    /// Dropped first: detached before the span is exited, the reverse of [`Carried::enter`].
    #[cfg(feature = "opentelemetry")]
    otel: Option<::opentelemetry::ContextGuard>,
    /// The span entered, to exit.
    #[cfg(feature = "tracing")]
    span: Option<std::sync::Arc<span::CarriedSpan>>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        #[cfg(feature = "opentelemetry")]
        drop(self.otel.take());
        #[cfg(feature = "tracing")]
        if let Some(span) = self.span.take() {
            span::exit(&span);
            // Released once exited: it may be the last handle.
            drop(span);
        }
    }
}

#[cfg(feature = "tracing")]
mod span {
    use std::sync::Arc;

    use tracing_core::Metadata;
    use tracing_core::dispatcher::{self, Dispatch};
    use tracing_core::span::Id;

    /// A handle on a span, as `tracing::Span` holds one: the subscriber that made it, and one
    /// of the references that keep it open.
    pub(super) struct CarriedSpan {
        pub(super) dispatch: Dispatch,
        pub(super) id: Id,
        /// With the id, what tells two spans apart (as `tracing::Span`'s `PartialEq` does).
        metadata: &'static Metadata<'static>,
    }

    impl Drop for CarriedSpan {
        fn drop(&mut self) {
            // The last handle closes the span: `on_close` for the subscriber's layers.
            self.dispatch.try_close(self.id.clone());
        }
    }

    /// Enters `span` on this thread; the result is the handle, for [`exit`].
    pub(super) fn enter(span: &Arc<CarriedSpan>) -> Arc<CarriedSpan> {
        span.dispatch.enter(&span.id);
        Arc::clone(span)
    }

    /// Exits `span`, which [`enter`] entered on this thread.
    pub(super) fn exit(span: &CarriedSpan) {
        span.dispatch.exit(&span.id);
    }

    /// A new handle on the current span, if there is one.
    #[cfg(feature = "tokio")]
    pub(super) fn handle() -> Option<CarriedSpan> {
        dispatcher::get_default(|dispatch| {
            let (id, metadata) = dispatch.current_span().into_inner()?;
            Some(CarriedSpan {
                id: dispatch.clone_span(&id),
                dispatch: dispatch.clone(),
                metadata,
            })
        })
    }

    /// A handle on the current span, if there is one: `carried` itself where it is that span
    /// (the span a context entered, still current), else a new one.
    pub(super) fn current(carried: Option<&Arc<CarriedSpan>>) -> Option<Arc<CarriedSpan>> {
        dispatcher::get_default(|dispatch| {
            let (id, metadata) = dispatch.current_span().into_inner()?;
            if let Some(carried) =
                carried.filter(|span| span.id == id && std::ptr::eq(span.metadata, metadata))
            {
                return Some(Arc::clone(carried));
            }
            Some(Arc::new(CarriedSpan {
                id: dispatch.clone_span(&id),
                dispatch: dispatch.clone(),
                metadata,
            }))
        })
    }
}
