//! The current `tracing` span flows with the context (feature `tracing`): [`carry_spans`].
//! Re-exported by the `tracing` module.

use crate::carried;

/// Makes the current `tracing` span part of what flows with the context, from now on, in the
/// whole process. Call it once, at start-up.
///
/// Every snapshot of the context then also holds the span current where it was taken:
/// `Context::current()`, and so every task of `contextvars::spawn`, `spawn_blocking` and
/// `spawn_local`, every thread of `contextvars::thread::spawn`, every job of
/// `run_in_executor`, every branch of `gather`, every `#[preserve_context]` future and
/// `.in_current_context()`, every request served through the tower layer, and, on a runtime
/// with the hooks (`contextvars::hooks`), every task however it is spawned. Code running in
/// such a context (a closure in `Context::run`, each poll of a future in it) runs inside that
/// span, as if it had been wrapped with `.in_current_span()`: an event logged in a task that a
/// request's handler spawned has the request's span as its parent, with its fields.
///
/// - The span is the one current where the snapshot is taken, whatever the context it is taken
///   in: a span a task entered itself (with `.instrument()` or `Span::enter`) is the one its own
///   spawns carry. Where no span is current, the snapshot carries none, and running in it
///   leaves the span that is current there as it is.
/// - The span is entered only while its context runs (a closure in it, a poll of a future in
///   it); the tower layer's requests carry the span current where each request is served,
///   not the one current where the layer was built.
/// - A snapshot holds the span open, as a `tracing::Span` handle does: it closes (`on_close`
///   for a subscriber's layers) when the last task, thread or snapshot holding it is gone.
/// - The values a context holds are dropped inside its span too (when its task ends or is
///   aborted, or the context is dropped), so a `Drop` that logs logs in it. OpenTelemetry's
///   context is not attached for those drops: a context may be dropped inside OpenTelemetry's
///   own code, where attaching panics.
///
/// While it is not called, nothing changes and nothing is paid but one atomic load per
/// snapshot; a `Context` is no larger for the feature. Once on, a snapshot taken where the
/// current span is the one its context carries (in a task spawned in that span) shares its
/// context's bindings and the span's handle, as a snapshot does without spans; elsewhere it
/// costs what `Span::current()` costs, plus a copy of one node of the bindings. A task of
/// `contextvars::spawn` spawned in a span its context does not carry (a handler under its
/// request's span) holds the span itself, as `.in_current_span()` would, and allocates
/// nothing more. Entering a context enters its span, as `Instrumented` does on every poll. The mapping view of a context (`len`, `iter`, `Debug`)
/// does not show the span: it is carried beside the variables, not among them.
///
/// # When not to
///
/// - **tokio-console.** With `--cfg tokio_unstable`, tokio gives each task a span of its own,
///   entered around each poll, which `console-subscriber` uses to attribute polls, wakers and
///   resources to tasks. On a runtime with the hooks, every poll then also enters the
///   spawner's span on top of it, which shows up in the console as the task running inside a
///   request's span. Leave spans uncarried while you watch a service with tokio-console, or
///   build the runtime you watch with `contextvars::hooks::install_without_spans`: its tasks
///   still inherit their spawner's variables, not its span.
/// - **Tasks that outlive their spawner.** A pool's worker or a background loop that the
///   first request happens to spawn would log under that request's span, and keep it open,
///   for as long as it runs. Spawn it with `contextvars::hooks::spawn_without_context` (or
///   inside `suppress_flow`), or run such tasks on a runtime built with
///   `install_without_spans`.
/// - **Code that already instruments its futures.** A future spawned with
///   `.in_current_span()` or `.instrument(span)` enters its span itself; carrying spans as
///   well enters the spawner's span a second time around it. That is harmless (a span
///   entered twice is the same parent, and a subscriber sees one more enter and exit per
///   poll), only redundant: `.instrument(other)` still wins, since it is entered inside.
///
/// ```
/// # use context_core as contextvars;
/// # use std::sync::{Arc, Mutex};
/// # use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
/// # struct Parents(Arc<Mutex<Vec<String>>>);
/// # impl<S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>> tracing_subscriber::Layer<S> for Parents {
/// #     fn on_event(&self, event: &tracing::Event<'_>, ctx: LayerContext<'_, S>) {
/// #         let parent = ctx.event_span(event).map_or("none", |span| span.name());
/// #         self.0.lock().unwrap().push(parent.to_string());
/// #     }
/// # }
/// # let seen = Arc::new(Mutex::new(Vec::new()));
/// # let subscriber = tracing_subscriber::registry().with(Parents(seen.clone()));
/// # let _default = tracing::subscriber::set_default(subscriber);
/// contextvars::tracing::carry_spans();
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let request = tracing::info_span!("request", id = 17);
/// let task = request.in_scope(|| {
///     // No `.in_current_span()`: the task takes the span along with the context.
///     contextvars::spawn(async { tracing::info!("in the task") })
/// });
/// task.await.unwrap();
/// # });
/// # assert_eq!(*seen.lock().unwrap(), ["request"]);
/// ```
pub fn carry_spans() {
    carried::carry_spans();
}
