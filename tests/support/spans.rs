//! A real tracing subscriber for the span-flow tests: the registry, and a layer that records,
//! for each event, its message and the name and fields of its parent span, and each span that
//! closes. Installed once per test binary as the global default, so that every worker thread
//! of every runtime reports to it; each test tells its own records apart by a field value.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// An event as the layer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Logged {
    pub(crate) message: String,
    /// The parent span's name and fields (`request{test=1}`), `None` at the root.
    pub(crate) parent: Option<String>,
}

#[derive(Default)]
struct Records {
    events: Vec<Logged>,
    /// Spans closed, as `name{fields}`.
    closed: Vec<String>,
    /// What to run when a span closes, by `name{fields}`.
    on_close: Vec<(String, fn())>,
}

fn records() -> &'static Mutex<Records> {
    static RECORDS: OnceLock<Mutex<Records>> = OnceLock::new();
    RECORDS.get_or_init(|| {
        let subscriber = tracing_subscriber::registry().with(Recorder);
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        Mutex::new(Records::default())
    })
}

/// Runs `f` inside the layer's `on_close` of the span shown as `span` (`name{fields}`), in
/// whatever context the code that closes it runs.
pub(crate) fn on_close_of(span: &str, f: fn()) {
    records()
        .lock()
        .unwrap()
        .on_close
        .push((span.to_string(), f));
}

/// Installs the subscriber (once per process).
pub(crate) fn install() {
    let _ = records();
}

/// The events whose message starts with `prefix`, in the order logged.
pub(crate) fn events(prefix: &str) -> Vec<Logged> {
    let records = records().lock().unwrap();
    records
        .events
        .iter()
        .filter(|event| event.message.starts_with(prefix))
        .cloned()
        .collect()
}

/// The event whose message is `message`; panics unless there is exactly one.
pub(crate) fn event(message: &str) -> Logged {
    let found: Vec<Logged> = events(message)
        .into_iter()
        .filter(|event| event.message == message)
        .collect();
    assert_eq!(found.len(), 1, "events logged as {message:?}: {found:?}");
    found.into_iter().next().unwrap()
}

/// Whether the span shown as `span` (`name{fields}`) has closed.
pub(crate) fn closed(span: &str) -> bool {
    records()
        .lock()
        .unwrap()
        .closed
        .iter()
        .any(|closed| closed == span)
}

struct Recorder;

/// A span's fields as `a=1 b="x"`, kept in its extensions.
struct Fields(String);

#[derive(Default)]
struct Visitor {
    message: String,
    fields: String,
}

impl Visit for Visitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{}={value:?}", field.name());
        }
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut visitor = Visitor::default();
        attrs.record(&mut visitor);
        let span = ctx.span(id).expect("a new span");
        let shown = format!("{}{{{}}}", span.name(), visitor.fields);
        span.extensions_mut().insert(Fields(shown));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut visitor = Visitor::default();
        event.record(&mut visitor);
        let parent = ctx.event_span(event).map(|span| {
            span.extensions()
                .get::<Fields>()
                .expect("fields recorded")
                .0
                .clone()
        });
        records().lock().unwrap().events.push(Logged {
            message: visitor.message,
            parent,
        });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let span = ctx.span(&id).expect("a closing span");
        let shown = span
            .extensions()
            .get::<Fields>()
            .expect("fields recorded")
            .0
            .clone();
        let run = {
            let mut records = records().lock().unwrap();
            let run: Vec<fn()> = records
                .on_close
                .iter()
                .filter(|(span, _)| *span == shown)
                .map(|(_, f)| *f)
                .collect();
            records.closed.push(shown);
            run
        };
        // Outside the lock: `f` may log.
        for f in run {
            f();
        }
    }
}
