//! OpenTelemetry's context flows with the context (feature `opentelemetry`).
//!
//! OpenTelemetry keeps a current [`opentelemetry::Context`] per thread (the active span, the
//! baggage, the values its instrumentations attach), and, like a `tracing` span, it stays
//! behind when a task is spawned unless each spawn says otherwise
//! (`FutureExt::with_current_context`). [`carry_context`] makes it flow with this crate's
//! context instead, everywhere that context flows.
//!
//! With the `baggage` feature too, [`BaggagePropagator`] joins the variables declared with
//! `#[context_var(baggage = "…")]` to OpenTelemetry's propagation: put it in the composite
//! propagator beside `TraceContextPropagator`, and every transport OpenTelemetry instruments
//! carries them; [`extracted`] gives the context an incoming carrier brought.
//!
//! [`opentelemetry::Context`]: https://docs.rs/opentelemetry/0.31/opentelemetry/struct.Context.html

#[cfg(feature = "baggage")]
mod propagator;

#[cfg(feature = "baggage")]
#[cfg_attr(docsrs, doc(cfg(feature = "baggage")))]
pub use propagator::{BaggagePropagator, extract_error, extracted};

use crate::carried;

/// Makes `opentelemetry::Context::current()` part of what flows with the context, from now
/// on, in the whole process. Call it once, at start-up.
///
/// Every snapshot of the context then also holds the OpenTelemetry context current where it
/// was taken: `Context::current()`, and so every task of `contextvars::spawn`,
/// `spawn_blocking` and `spawn_local`, every thread of `contextvars::thread::spawn`, every
/// job of `run_in_executor`, every branch of `gather`, every `#[preserve_context]` future and
/// `.in_current_context()`, every request served through the tower layer, and, on a runtime
/// with the hooks (`contextvars::hooks`), every task however it is spawned. Code running in
/// such a context (a closure in `Context::run`, each poll of a future in it) runs with that
/// OpenTelemetry context attached, so `opentelemetry::Context::current()` there is the
/// spawner's, and what the code attaches itself is what its own spawns carry.
///
/// The OpenTelemetry context is attached only while its context runs, on the thread that runs
/// it, and detached when it stops (on that same thread, as OpenTelemetry requires). The
/// version of `opentelemetry` must be the one this crate is built with (0.31): another
/// version's context is another type, with a current of its own, which does not flow.
///
/// While it is not called, nothing changes and nothing is paid but one atomic load per
/// snapshot. Once on, a snapshot costs what `opentelemetry::Context::current()` costs (a few
/// reference counts), and entering a context attaches it.
///
/// ```
/// # use context_core as contextvars;
/// #[derive(Debug, PartialEq)]
/// struct TraceTag(&'static str);
///
/// contextvars::opentelemetry::carry_context();
///
/// # tokio::runtime::Builder::new_multi_thread().build().unwrap().block_on(async {
/// let _attached = opentelemetry::Context::current_with_value(TraceTag("checkout")).attach();
/// // No `.with_current_context()`: the task takes OpenTelemetry's context along.
/// let seen = contextvars::spawn(async {
///     opentelemetry::Context::current().get::<TraceTag>().map(|tag| tag.0)
/// });
/// assert_eq!(seen.await.unwrap(), Some("checkout"));
/// # });
/// ```
pub fn carry_context() {
    carried::carry_otel();
}
