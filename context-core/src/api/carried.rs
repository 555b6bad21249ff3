//! What a context carries besides its variables: the `tracing` span (feature `tracing`) and
//! OpenTelemetry's context (feature `opentelemetry`) that were current where it was taken,
//! once the application turns that on (`contextvars::tracing::carry_spans`,
//! `contextvars::opentelemetry::carry_context`).
//!
//! Each is the binding of a private variable, put in a snapshot by [`capture`] (called by
//! `Context::current()`), so it goes wherever a context goes (the spawn helpers, the hooks'
//! table, clones) with no code of its own, and is dropped with the context's other values;
//! the mapping view (`len`, `iter`, `Debug`) does not show it. Entering a context that holds
//! one ([`find`] before the swap, [`Found::enter`] after it) enters the span and attaches the
//! OpenTelemetry context, on that thread, until the returned [`Carried`] drops.
//!
//! While nothing was ever turned on, each of these costs one relaxed load: no snapshot can hold
//! a carried binding then, since only [`capture`] makes one, and only once turned on. The
//! switches only ever go on, so a context that holds a binding was made after one did.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::map::Map;

/// `carry_spans` was called.
#[cfg(feature = "tracing")]
const SPANS: u8 = 1;
/// `carry_context` was called.
#[cfg(feature = "opentelemetry")]
const OTEL: u8 = 2;

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

/// Whether a context may hold a carried binding: something was turned on.
#[inline]
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

/// Adds to a snapshot, `map`, what is current here and turned on: the span, OpenTelemetry's
/// context. A span the snapshot already holds (the one its context entered) is kept as it
/// is, without a new handle.
#[inline]
pub(crate) fn capture(map: &mut Map) {
    let carry = carry();
    if carry != 0 {
        capture_turned_on(map, carry);
    }
}

#[inline(never)]
#[cfg_attr(
    not(any(feature = "tracing", feature = "opentelemetry")),
    allow(unused_variables, clippy::needless_pass_by_ref_mut)
)]
fn capture_turned_on(map: &mut Map, carry: u8) {
    #[cfg(feature = "tracing")]
    if carry & SPANS != 0 {
        span::capture(map);
    }
    #[cfg(feature = "opentelemetry")]
    if carry & OTEL != 0 {
        otel::capture(map);
    }
}

/// Removes from `map` what a context carries: for a template that every request copies (the
/// tower layer's base), whose copies must carry what is current at the request instead.
pub(crate) fn forget(map: &mut Map) {
    if any() {
        forget_turned_on(map);
    }
}

#[cfg_attr(
    not(any(feature = "tracing", feature = "opentelemetry")),
    allow(unused_variables, clippy::needless_pass_by_ref_mut)
)]
fn forget_turned_on(map: &mut Map) {
    // Shared with the context the template was taken from, if any: only counts go down, and
    // a last handle on a span closes it here, which runs no code of the application's.
    #[cfg(feature = "tracing")]
    drop(map.remove(span::SPAN.key()));
    #[cfg(feature = "opentelemetry")]
    drop(map.remove(otel::OTEL_CONTEXT.key()));
}

/// Whether `key` is one of the private variables of this module, which the mapping view of a
/// context does not show.
#[inline]
pub(crate) fn hides(key: u32) -> bool {
    any() && hides_turned_on(key)
}

#[cfg_attr(
    not(any(feature = "tracing", feature = "opentelemetry")),
    allow(unused_variables)
)]
fn hides_turned_on(key: u32) -> bool {
    #[cfg(feature = "tracing")]
    if key == span::SPAN.key() {
        return true;
    }
    #[cfg(feature = "opentelemetry")]
    if key == otel::OTEL_CONTEXT.key() {
        return true;
    }
    false
}

/// How many of `map`'s bindings [`hides`] hides.
#[inline]
pub(crate) fn hidden(map: &Map) -> usize {
    if any() { hidden_turned_on(map) } else { 0 }
}

#[cfg_attr(
    not(any(feature = "tracing", feature = "opentelemetry")),
    allow(unused_variables)
)]
fn hidden_turned_on(map: &Map) -> usize {
    #[allow(unused_mut)]
    let mut hidden = 0;
    #[cfg(feature = "tracing")]
    {
        hidden += usize::from(map.get(span::SPAN.key()).is_some());
    }
    #[cfg(feature = "opentelemetry")]
    {
        hidden += usize::from(map.get(otel::OTEL_CONTEXT.key()).is_some());
    }
    hidden
}

/// What a context about to be entered carries, found in its bindings, `map`.
#[derive(Default)]
pub(crate) struct Found {
    #[cfg(feature = "tracing")]
    span: Option<std::sync::Arc<span::CarriedSpan>>,
    #[cfg(feature = "opentelemetry")]
    otel: Option<::opentelemetry::Context>,
}

/// What the context whose bindings are `map` carries, to enter with it; `None` if nothing.
/// It only clones handles, and runs no code of anyone else's: callable under a lock.
#[inline]
pub(crate) fn find(map: &Map) -> Option<Found> {
    if any() { find_turned_on(map) } else { None }
}

#[cfg_attr(
    not(any(feature = "tracing", feature = "opentelemetry")),
    allow(unused_variables, clippy::unnecessary_wraps)
)]
fn find_turned_on(map: &Map) -> Option<Found> {
    #[allow(unused_mut)]
    let mut found = Found::default();
    #[allow(unused_mut)]
    let mut some = false;
    #[cfg(feature = "tracing")]
    if let Some(leaf) = map.get(span::SPAN.key()) {
        found.span = std::sync::Arc::clone(&leaf.value).downcast().ok();
        some = true;
    }
    #[cfg(feature = "opentelemetry")]
    if let Some(leaf) = map.get(otel::OTEL_CONTEXT.key()) {
        found.otel = leaf
            .value
            .downcast_ref::<::opentelemetry::Context>()
            .cloned();
        some = true;
    }
    some.then_some(found)
}

impl Found {
    /// Enters the span and attaches OpenTelemetry's context, until the result drops, which
    /// must happen on this thread, after what was entered since has been left (as with
    /// `Span::enter` and `Context::attach`).
    #[cfg_attr(
        not(any(feature = "tracing", feature = "opentelemetry")),
        allow(clippy::unused_self)
    )]
    pub(crate) fn enter(self) -> Carried {
        #[cfg(feature = "tracing")]
        if let Some(span) = &self.span {
            span.dispatch.enter(&span.id);
        }
        Carried {
            #[cfg(feature = "opentelemetry")]
            otel: self.otel.map(::opentelemetry::Context::attach),
            #[cfg(feature = "tracing")]
            span: self.span,
            _not_send: std::marker::PhantomData,
        }
    }
}

/// While alive, the span of a context is entered and its OpenTelemetry context attached, on
/// this thread. Not `Send`: it must drop where it was made.
pub(crate) struct Carried {
    /// Dropped first: detached before the span is exited, the reverse of [`Found::enter`].
    #[cfg(feature = "opentelemetry")]
    otel: Option<::opentelemetry::ContextGuard>,
    #[cfg(feature = "tracing")]
    span: Option<std::sync::Arc<span::CarriedSpan>>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for Carried {
    fn drop(&mut self) {
        #[cfg(feature = "opentelemetry")]
        drop(self.otel.take());
        #[cfg(feature = "tracing")]
        if let Some(span) = &self.span {
            span.dispatch.exit(&span.id);
        }
    }
}

#[cfg(feature = "tracing")]
mod span {
    use tracing_core::Metadata;
    use tracing_core::dispatcher::{self, Dispatch};
    use tracing_core::span::Id;

    use crate::map::Map;
    use crate::var::{ContextVar, Key, NoDefault, downcast};

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

    pub(super) enum SpanKey {}

    impl Key for SpanKey {
        type Value = CarriedSpan;
        type Default = NoDefault;

        fn fmt_value(value: &CarriedSpan, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}", value.metadata.name())
        }
    }

    /// The span current where a snapshot was taken.
    pub(super) static SPAN: ContextVar<SpanKey> = ContextVar::new("tracing::Span");

    enum Change {
        Keep,
        Set(CarriedSpan),
        Remove,
    }

    pub(super) fn capture(map: &mut Map) {
        let key = SPAN.key();
        let held = map.get(key).map(|leaf| {
            let span = downcast::<CarriedSpan>(&*leaf.value);
            (span.id.clone(), span.metadata)
        });
        let change =
            dispatcher::get_default(|dispatch| match dispatch.current_span().into_inner() {
                Some((id, metadata)) => {
                    if held.as_ref().is_some_and(|(held_id, held_metadata)| {
                        *held_id == id && std::ptr::eq(*held_metadata, metadata)
                    }) {
                        Change::Keep
                    } else {
                        Change::Set(CarriedSpan {
                            id: dispatch.clone_span(&id),
                            dispatch: dispatch.clone(),
                            metadata,
                        })
                    }
                }
                None if held.is_some() => Change::Remove,
                None => Change::Keep,
            });
        // What is replaced or removed is shared with the context the snapshot was taken from,
        // which keeps it: dropping it here only lowers a count.
        match change {
            Change::Keep => {}
            Change::Set(span) => drop(map.insert(SPAN.leaf(span))),
            Change::Remove => drop(map.remove(key)),
        }
    }
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use crate::map::Map;
    use crate::var::{ContextVar, Key, NoDefault};

    pub(super) enum OtelKey {}

    impl Key for OtelKey {
        type Value = ::opentelemetry::Context;
        type Default = NoDefault;

        fn fmt_value(
            value: &::opentelemetry::Context,
            f: &mut std::fmt::Formatter<'_>,
        ) -> std::fmt::Result {
            std::fmt::Debug::fmt(value, f)
        }
    }

    /// OpenTelemetry's context current where a snapshot was taken.
    pub(super) static OTEL_CONTEXT: ContextVar<OtelKey> = ContextVar::new("opentelemetry::Context");

    pub(super) fn capture(map: &mut Map) {
        let current = ::opentelemetry::Context::current();
        // Shared with the context the snapshot was taken from: only a count goes down.
        drop(map.insert(OTEL_CONTEXT.leaf(current)));
    }
}
