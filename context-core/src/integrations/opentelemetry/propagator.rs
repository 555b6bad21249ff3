//! The baggage variables in OpenTelemetry's propagation: a `TextMapPropagator` that writes and
//! reads them through any transport OpenTelemetry instruments.

use opentelemetry::baggage::BaggageExt as _;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};

use crate::baggage::{self, BaggageError, Carrier};
use crate::context::Context;

/// The key baggage travels under.
const BAGGAGE: &str = "baggage";

/// An OpenTelemetry [`TextMapPropagator`][text-map] for the variables declared with
/// `#[context_var(baggage = "…")]` and the metadata entries set for baggage: it writes them
/// into, and reads them from, the W3C `baggage` entry of any carrier OpenTelemetry propagates
/// through (HTTP headers, a message broker's headers, a `HashMap<String, String>`), exactly as
/// [`contextvars::baggage::inject`](crate::baggage::inject) and
/// [`extract`](crate::baggage::extract) do. Needs the features `opentelemetry` and `baggage`.
///
/// It is `Send + Sync`, so it goes into a
/// [`TextMapCompositePropagator`](https://docs.rs/opentelemetry/0.31/opentelemetry/propagation/composite/struct.TextMapCompositePropagator.html)
/// beside `TraceContextPropagator`, and into `opentelemetry::global::set_text_map_propagator`.
///
/// # Injecting
/// [`inject_context`][inject-context] writes the **current** context's
/// baggage (the context the calling code runs in, as `inject` does), together with the
/// entries of the OpenTelemetry context's own `Baggage` (`cx.baggage()`, what
/// OpenTelemetry's `BaggagePropagator` writes), into one `baggage` value. Where both hold a
/// key, OpenTelemetry's entry is written, as `inject` keeps an entry already on the request.
/// The value stays within the W3C limits (entries that would pass them are left out). Where
/// there is nothing to write, the carrier is not touched; otherwise its `baggage` value is
/// replaced, as OpenTelemetry's propagators replace it (an `Injector` can only set; to merge
/// with a value already there, use [`inject_into`](crate::baggage::inject_into)).
///
/// Beside OpenTelemetry's own `BaggagePropagator`, which writes the same key, put this one
/// **after** it: each replaces the `baggage` value, and this one writes both sets of entries,
/// so nothing is lost. Put before it, this one's entries are replaced whenever
/// OpenTelemetry's `Baggage` is not empty. Alone, it writes OpenTelemetry's baggage too.
///
/// # Extracting
/// [`extract_with_context`][extract-with-context] reads the carrier's
/// `baggage` value into a copy of the current context (what the current context holds for a
/// variable or metadata key wins; entries no variable claims are kept as metadata, to
/// forward), checked as [`extract`](crate::baggage::extract) checks it, and stores that
/// context in the OpenTelemetry context it returns. Take it out with [`extracted`], which
/// gives the [`Context`](crate::Context) to run the message's or request's work in:
/// running in it (`run`, `with_context`) also attaches the OpenTelemetry context it came
/// from, so the work continues the trace the carrier brought. It never sets or switches any
/// current context, OpenTelemetry's or this crate's, so it works in a task with no context
/// and while OpenTelemetry's current context is borrowed (where `TextMapPropagator::extract`
/// calls it).
///
/// A bad `baggage` value (malformed, over the limits, a value a variable cannot parse) is
/// ignored as a whole, as OpenTelemetry's propagators ignore what they cannot parse, and
/// never panics: the context stored is then the copy of the current context without the
/// carrier's entries, and [`extract_error`] says what was wrong, for an application that
/// would rather refuse the message. Other propagators of a composite are not affected.
///
/// [text-map]: https://docs.rs/opentelemetry/0.31/opentelemetry/propagation/text_map_propagator/trait.TextMapPropagator.html
/// [inject-context]: https://docs.rs/opentelemetry/0.31/opentelemetry/propagation/text_map_propagator/trait.TextMapPropagator.html#tymethod.inject_context
/// [extract-with-context]: https://docs.rs/opentelemetry/0.31/opentelemetry/propagation/text_map_propagator/trait.TextMapPropagator.html#tymethod.extract_with_context
///
/// # Panics
/// In `extract_with_context`, if two variables in the program claim the same baggage key (a
/// bug of the program, not of the input), as [`extract`](crate::baggage::extract) does.
///
/// ```
/// # use context_core as contextvars;
/// use std::collections::HashMap;
///
/// use contextvars::metadata::{MetadataFlags, get_metadata, set_metadata_with};
/// use contextvars::opentelemetry::{BaggagePropagator, extracted};
/// use opentelemetry::propagation::TextMapPropagator;
///
/// let propagator = BaggagePropagator::new();
///
/// // Sender: the current context's baggage into the message's headers.
/// set_metadata_with("region", "eu west", MetadataFlags::BAGGAGE);
/// let mut headers = HashMap::new();
/// propagator.inject(&mut headers);
/// assert_eq!(headers["baggage"], "region=eu%20west");
///
/// // Receiver: the context the headers carry, to run the work in.
/// let cx = propagator.extract(&headers);
/// let mut context = extracted(&cx).expect("extracted by the propagator");
/// assert_eq!(context.run(|| get_metadata("region")).as_deref(), Some("eu west"));
/// ```
#[derive(Debug, Clone)]
pub struct BaggagePropagator {
    /// What `fields` lists: `baggage`.
    fields: Vec<String>,
}

impl BaggagePropagator {
    /// The propagator.
    #[must_use]
    pub fn new() -> Self {
        BaggagePropagator {
            fields: vec![BAGGAGE.to_string()],
        }
    }
}

impl Default for BaggagePropagator {
    fn default() -> Self {
        BaggagePropagator::new()
    }
}

impl TextMapPropagator for BaggagePropagator {
    /// Writes the current context's baggage and `cx`'s own `Baggage` entries into the
    /// carrier's `baggage` value (see [`BaggagePropagator`]).
    fn inject_context(&self, cx: &opentelemetry::Context, injector: &mut dyn Injector) {
        // OpenTelemetry's entries first, as if already on the carrier: the writer keeps them
        // and adds the current context's after them.
        let mut outgoing = Outgoing(String::new());
        for (key, (value, metadata)) in cx.baggage() {
            let key = key.as_str();
            if !baggage::is_baggage_key(key) {
                continue;
            }
            if !outgoing.0.is_empty() {
                outgoing.0.push(',');
            }
            let properties = Some(metadata.as_str().trim()).filter(|p| !p.is_empty());
            baggage::write_member(&mut outgoing.0, key, value.as_str(), properties);
        }
        baggage::inject_from(&Context::current(), &mut outgoing);
        if !outgoing.0.is_empty() {
            injector.set(BAGGAGE, outgoing.0);
        }
    }

    /// A copy of the current context with the carrier's baggage, stored in a copy of `cx`;
    /// take it out with [`extracted`] (see [`BaggagePropagator`]).
    #[track_caller]
    fn extract_with_context(
        &self,
        cx: &opentelemetry::Context,
        extractor: &dyn Extractor,
    ) -> opentelemetry::Context {
        let (context, accepted) = baggage::extract_detached(&Incoming(extractor));
        cx.with_value(Extracted {
            context,
            error: accepted.err(),
        })
    }

    /// The one field this propagator reads and writes: `baggage`.
    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}

/// What [`BaggagePropagator`] extracted, stored in the OpenTelemetry context it returns.
struct Extracted {
    /// The current context with the carrier's entries (without them after an error). It
    /// carries no OpenTelemetry context: one carrying the context it is stored in would keep
    /// both alive forever.
    context: Context,
    /// Why the carrier's `baggage` value was ignored.
    error: Option<BaggageError>,
}

/// The [`Context`](crate::Context) a [`BaggagePropagator`] extracted into `cx`: the
/// current context where the propagator ran, with the carrier's baggage entries added (or
/// without them, where the carrier's value was bad: see [`extract_error`]). Running in it
/// attaches `cx` as well, so `opentelemetry::Context::current()` there is `cx` (with the
/// remote span a `TraceContextPropagator` of the same composite extracted), and, once
/// [`carry_context`](crate::opentelemetry::carry_context) is on, the tasks it spawns carry
/// `cx` too.
///
/// `None` where `cx` did not come from a `BaggagePropagator`'s extraction (alone or in a
/// composite).
///
/// ```
/// # use context_core as contextvars;
/// use std::collections::HashMap;
///
/// use contextvars::FutureExt;
/// use contextvars::metadata::get_metadata;
/// use contextvars::opentelemetry::{BaggagePropagator, extracted};
/// use opentelemetry::propagation::TextMapPropagator;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let headers = HashMap::from([("baggage".to_string(), "order=17".to_string())]);
/// let cx = BaggagePropagator::new().extract(&headers);
/// let context = extracted(&cx).unwrap_or_else(contextvars::Context::current);
/// let order = async { get_metadata("order") }.with_context(context).await;
/// assert_eq!(order.as_deref(), Some("17"));
/// # });
/// ```
#[must_use]
pub fn extracted(cx: &opentelemetry::Context) -> Option<Context> {
    let extracted = cx.get::<Extracted>()?;
    Some(extracted.context.clone().carrying_otel(cx.clone()))
}

/// Why a [`BaggagePropagator`] ignored the `baggage` value of the carrier it extracted `cx`
/// from: the same [`BaggageError`] as [`extract`](crate::baggage::extract)'s, which names the
/// bad entry ([`BaggageError::key`]). `None` where the value was good, absent, or `cx` did
/// not come from a `BaggagePropagator`.
///
/// ```
/// # use context_core as contextvars;
/// use std::collections::HashMap;
///
/// use contextvars::opentelemetry::{BaggagePropagator, extract_error};
/// use opentelemetry::propagation::TextMapPropagator;
///
/// let headers = HashMap::from([("baggage".to_string(), "discount=50%off".to_string())]);
/// let cx = BaggagePropagator::new().extract(&headers);
/// assert_eq!(extract_error(&cx).and_then(|err| err.key()), Some("discount"));
/// ```
#[must_use]
pub fn extract_error(cx: &opentelemetry::Context) -> Option<&BaggageError> {
    cx.get::<Extracted>()?.error.as_ref()
}

/// An OpenTelemetry `Extractor` read as a [`Carrier`] (read only).
struct Incoming<'a>(&'a dyn Extractor);

impl Carrier for Incoming<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }

    fn set(&mut self, _: &str, _: String) {
        // Never written: extraction only reads.
    }

    fn get_all(&self, key: &str) -> Vec<Result<&str, &[u8]>> {
        self.0
            .get_all(key)
            .unwrap_or_default()
            .into_iter()
            .map(Ok)
            .collect()
    }
}

/// The `baggage` value being written: the only key the writer touches.
struct Outgoing(String);

impl Carrier for Outgoing {
    fn get(&self, key: &str) -> Option<&str> {
        (key == BAGGAGE && !self.0.is_empty()).then_some(self.0.as_str())
    }

    fn set(&mut self, key: &str, value: String) {
        if key == BAGGAGE {
            self.0 = value;
        }
    }
}
