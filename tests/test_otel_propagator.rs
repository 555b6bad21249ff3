//! `contextvars::opentelemetry::BaggagePropagator`: the typed baggage variables through
//! OpenTelemetry's propagation, alone and in a `TextMapCompositePropagator` with
//! `TraceContextPropagator` and OpenTelemetry's own `BaggagePropagator`, through HTTP headers
//! and a plain map, in a task with no context, against hostile headers, with
//! `carry_context()` off and then on (it only ever goes on, so one test runs every scenario
//! twice, in order).

#![cfg(all(feature = "opentelemetry", feature = "baggage"))]

use std::collections::HashMap;

use axum::http::{self, HeaderName, HeaderValue};
use contextvars::baggage::extract;
use contextvars::metadata::{MetadataFlags, get_metadata, set_metadata, set_metadata_with};
use contextvars::opentelemetry::{BaggagePropagator, extract_error, extracted};
use contextvars::{Context, FutureExt, context_var};
use opentelemetry::StringValue;
use opentelemetry::baggage::{BaggageExt, BaggageMetadata, KeyValueMetadata};
use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::{
    BaggagePropagator as OtelBaggagePropagator, TraceContextPropagator,
};

#[context_var(baggage = "tenant")]
static TENANT: String;

#[context_var(baggage = "user_id")]
static USER_ID: u64;

/// A value that needs escapes: a space, a comma, a semicolon, non-ASCII.
const TENANT_VALUE: &str = "acme, inc.; é";

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// What a service installs: the trace, OpenTelemetry's baggage, then the typed variables.
fn composite() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(OtelBaggagePropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

/// An OpenTelemetry context with a sampled span of trace [`TRACE_ID`].
fn traced() -> opentelemetry::Context {
    let span = SpanContext::new(
        TraceId::from_hex(TRACE_ID).unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    opentelemetry::Context::new().with_remote_span_context(span)
}

fn trace_id(cx: &opentelemetry::Context) -> String {
    cx.span().span_context().trace_id().to_string()
}

/// `http::HeaderMap` as OpenTelemetry's injector and extractor, as `opentelemetry-http`'s
/// `HeaderInjector` and `HeaderExtractor` do it.
struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        let all: Vec<&str> = self
            .0
            .get_all(key)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect();
        (!all.is_empty()).then_some(all)
    }
}

/// The sender's values, in a context of their own.
fn sender() -> Context {
    Context::new().wrap(|| {
        let _ = TENANT.set(TENANT_VALUE.to_string());
        let _ = USER_ID.set(42);
        set_metadata_with("campaign", "spring sale", MetadataFlags::BAGGAGE);
        set_metadata("secret", "not sent");
        Context::current()
    })()
}

type Seen = (Option<String>, Option<u64>, Option<String>, Option<String>);

/// What code running in `context` reads.
fn seen(context: &mut Context) -> Seen {
    context.run(|| {
        (
            TENANT.get(),
            USER_ID.get(),
            get_metadata("campaign"),
            get_metadata("secret"),
        )
    })
}

fn sent() -> Seen {
    (
        Some(TENANT_VALUE.to_string()),
        Some(42),
        Some("spring sale".to_string()),
        None,
    )
}

fn round_trip_through_a_plain_map() {
    let propagator = BaggagePropagator::new();
    let mut carrier: HashMap<String, String> = HashMap::new();
    sender().run(|| propagator.inject(&mut carrier));
    assert_eq!(carrier.len(), 1, "{carrier:?}");
    assert!(carrier["baggage"].contains("user_id=42"), "{carrier:?}");

    Context::new().run(|| {
        let cx = propagator.extract(&carrier);
        assert!(extract_error(&cx).is_none());
        let mut context = extracted(&cx).expect("the propagator stores what it extracted");
        assert_eq!(seen(&mut context), sent(), "{carrier:?}");
        // Nothing was set in the receiver's own context.
        assert_eq!((TENANT.get(), USER_ID.get()), (None, None));
    });
    // An OpenTelemetry context that no `BaggagePropagator` made holds nothing of it.
    assert!(extracted(&opentelemetry::Context::new()).is_none());
    assert!(extract_error(&opentelemetry::Context::new()).is_none());
}

fn round_trip_through_http_headers_with_the_trace(runtime: &tokio::runtime::Runtime) {
    let propagator = composite();
    let mut headers = http::HeaderMap::new();
    sender().run(|| {
        let _attached = traced().attach();
        propagator.inject(&mut HeaderInjector(&mut headers));
    });
    assert!(headers.contains_key("traceparent"), "{headers:?}");

    // The receiver: a plain tokio task, which has no context.
    let (cx_trace, values, trace_inside) = runtime
        .block_on(runtime.spawn(async move {
            // Injecting from no context writes nothing.
            let mut nothing: HashMap<String, String> = HashMap::new();
            propagator.inject(&mut nothing);
            assert!(nothing.is_empty(), "{nothing:?}");
            let cx = propagator.extract(&HeaderExtractor(&headers));
            let context = extracted(&cx).expect("extracted");
            let inside = async {
                let mut here = Context::current();
                (
                    seen(&mut here),
                    trace_id(&opentelemetry::Context::current()),
                )
            }
            .with_context(context)
            .await;
            (trace_id(&cx), inside.0, inside.1)
        }))
        .unwrap();
    assert_eq!(cx_trace, TRACE_ID);
    assert_eq!(values, sent());
    // Running in the extracted context attaches the OpenTelemetry context it came in.
    assert_eq!(trace_inside, TRACE_ID);
}

fn opentelemetrys_own_baggage_and_ours_share_the_header() {
    let otel = traced().with_baggage(vec![
        KeyValueMetadata::new("otel-only", "1", BaggageMetadata::from("p=1")),
        KeyValueMetadata::new("user_id", "7", BaggageMetadata::default()),
    ]);
    let mut carrier: HashMap<String, String> = HashMap::new();
    sender().run(|| composite().inject_context(&otel, &mut carrier));

    // OpenTelemetry reads every entry, its own and ours; where both had a key, its own.
    let read = OtelBaggagePropagator::new().extract(&carrier);
    let baggage = read.baggage();
    assert_eq!(baggage.get("otel-only").map(StringValue::as_str), Some("1"));
    assert_eq!(baggage.get("user_id").map(StringValue::as_str), Some("7"));
    assert_eq!(
        baggage.get("tenant").map(StringValue::as_str),
        Some(TENANT_VALUE)
    );
    assert_eq!(
        baggage.get("campaign").map(StringValue::as_str),
        Some("spring sale")
    );
    // And the typed side reads them back, the unclaimed one as metadata.
    let cx = Context::new().run(|| composite().extract(&carrier));
    assert_eq!(trace_id(&cx), TRACE_ID);
    assert_eq!(
        cx.baggage().get("otel-only").map(StringValue::as_str),
        Some("1")
    );
    let mut context = extracted(&cx).unwrap();
    assert_eq!(
        context.run(|| (TENANT.get(), USER_ID.get(), get_metadata("otel-only"))),
        (
            Some(TENANT_VALUE.to_string()),
            Some(7),
            Some("1".to_string())
        )
    );

    // Ours alone writes OpenTelemetry's entries too.
    let mut alone: HashMap<String, String> = HashMap::new();
    Context::new().run(|| BaggagePropagator::new().inject_context(&otel, &mut alone));
    let read = OtelBaggagePropagator::new().extract(&alone);
    assert_eq!(
        read.baggage().get("otel-only").map(StringValue::as_str),
        Some("1")
    );

    // With OpenTelemetry's baggage empty, the order in the composite does not matter.
    let reversed = TextMapCompositePropagator::new(vec![
        Box::new(BaggagePropagator::new()),
        Box::new(OtelBaggagePropagator::new()),
    ]);
    let mut carrier: HashMap<String, String> = HashMap::new();
    sender().run(|| reversed.inject_context(&traced(), &mut carrier));
    let mut context = extracted(&Context::new().run(|| reversed.extract(&carrier))).unwrap();
    assert_eq!(seen(&mut context), sent());
}

fn what_the_receiver_holds_wins_and_unclaimed_entries_go_on() {
    let carrier = HashMap::from([(
        "baggage".to_string(),
        "tenant=theirs,user_id=5,note=x,extra=y;p=1".to_string(),
    )]);
    let propagator = BaggagePropagator::new();
    Context::new().run(|| {
        let _ = TENANT.set("mine".to_string());
        set_metadata("note", "private");
        let mut context = extracted(&propagator.extract(&carrier)).unwrap();
        let (tenant, user, note, extra, forwarded) = context.run(|| {
            let mut out: HashMap<String, String> = HashMap::new();
            propagator.inject(&mut out);
            (
                TENANT.get(),
                USER_ID.get(),
                get_metadata("note"),
                get_metadata("extra"),
                out.remove("baggage").unwrap_or_default(),
            )
        });
        assert_eq!(tenant.as_deref(), Some("mine"));
        assert_eq!(user, Some(5));
        assert_eq!(note.as_deref(), Some("private"));
        assert_eq!(extra.as_deref(), Some("y"));
        assert!(forwarded.contains("extra=y;p=1"), "{forwarded}");
        assert!(forwarded.contains("tenant=mine"), "{forwarded}");
        assert!(!forwarded.contains("note="), "{forwarded}");
    });
}

fn nothing_to_write_leaves_the_carrier_alone() {
    let mut carrier = HashMap::from([("baggage".to_string(), "a=1".to_string())]);
    Context::new().run(|| BaggagePropagator::new().inject(&mut carrier));
    assert_eq!(carrier["baggage"], "a=1");
}

fn a_hostile_header_is_ignored_and_reported(runtime: &tokio::runtime::Runtime) {
    let many = vec!["k=v"; 200].join(",");
    let long = format!("tenant={}", "x".repeat(9000));
    let cases: Vec<(String, Option<&str>)> = vec![
        ("tenant=acme,user_id=abc".into(), Some("user_id")),
        ("tenant=50%off".into(), Some("tenant")),
        ("tenant=acme,no-equals-sign".into(), None),
        ("tenant=acme,user_id=1;=".into(), Some("user_id")),
        ("tenant=\u{7f}\u{0}".into(), None),
        ("tenant=é".into(), None),
        (many, None),
        (long, None),
    ];
    for (header, key) in cases {
        let mut carrier = HashMap::from([("baggage".to_string(), header.clone())]);
        TraceContextPropagator::new().inject_context(&traced(), &mut carrier);
        let propagator = composite();
        let (trace, error, values) = runtime
            .block_on(runtime.spawn(async move {
                let cx = propagator.extract(&carrier);
                let error = extract_error(&cx).cloned();
                let mut context = extracted(&cx).unwrap();
                (trace_id(&cx), error, seen(&mut context))
            }))
            .expect("no panic in the propagator");
        let error = error.unwrap_or_else(|| panic!("{header:?} is accepted"));
        if let Some(key) = key {
            assert_eq!(error.key(), Some(key), "{header:?}: {error}");
        }
        // Nothing of a bad header is taken; the trace still arrives.
        assert_eq!(values, (None, None, None, None), "{header:?}");
        assert_eq!(trace, TRACE_ID, "{header:?}");
    }
}

fn extraction_inside_a_context_that_carries_opentelemetrys() {
    // With `carry_context()` on, this context carries (and entering it attaches) an
    // OpenTelemetry context; the propagator runs inside `Context::map_current`.
    let _attached = traced().attach();
    let mut outer = Context::current();
    let carrier = HashMap::from([("baggage".to_string(), "user_id=3".to_string())]);
    let cx = outer.run(|| composite().extract(&carrier));
    let mut context = extracted(&cx).unwrap();
    assert_eq!(context.run(|| USER_ID.get()), Some(3));
    let mut out: HashMap<String, String> = HashMap::new();
    context.run(|| composite().inject(&mut out));
    assert!(out["baggage"].contains("user_id=3"), "{out:?}");
    assert!(out["traceparent"].contains(TRACE_ID), "{out:?}");
}

fn through_the_global_propagator() {
    opentelemetry::global::set_text_map_propagator(composite());
    let mut carrier: HashMap<String, String> = HashMap::new();
    sender().run(|| {
        opentelemetry::global::get_text_map_propagator(|p| p.inject(&mut carrier));
    });
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    assert_eq!(seen(&mut extracted(&cx).unwrap()), sent());
}

fn scenarios(runtime: &tokio::runtime::Runtime) {
    round_trip_through_a_plain_map();
    round_trip_through_http_headers_with_the_trace(runtime);
    opentelemetrys_own_baggage_and_ours_share_the_header();
    what_the_receiver_holds_wins_and_unclaimed_entries_go_on();
    nothing_to_write_leaves_the_carrier_alone();
    a_hostile_header_is_ignored_and_reported(runtime);
    extraction_inside_a_context_that_carries_opentelemetrys();
    through_the_global_propagator();
}

#[test]
fn every_scenario_with_carry_context_off_then_on() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    scenarios(&runtime);
    contextvars::opentelemetry::carry_context();
    scenarios(&runtime);
    // With it on, a task spawned in the extracted context carries the trace on.
    let carrier = HashMap::from([
        ("baggage".to_string(), "user_id=11".to_string()),
        (
            "traceparent".to_string(),
            format!("00-{TRACE_ID}-00f067aa0ba902b7-01"),
        ),
    ]);
    let context = extracted(&composite().extract(&carrier)).unwrap();
    let (user, trace) = runtime.block_on(
        async {
            contextvars::spawn(async {
                (USER_ID.get(), trace_id(&opentelemetry::Context::current()))
            })
            .await
            .unwrap()
        }
        .with_context(context),
    );
    assert_eq!((user, trace.as_str()), (Some(11), TRACE_ID));
}

/// Under the hooks, a plain `tokio::spawn` task holds a read-only snapshot of its spawner's
/// context: extracting in it, and running in what was extracted, work as anywhere else.
#[cfg(all(feature = "hooks", tokio_unstable))]
#[test]
fn under_the_hooks_a_plain_task_extracts_and_runs_in_what_it_got() {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let runtime = contextvars::hooks::install(builder.worker_threads(2).enable_all())
        .build()
        .unwrap();
    let carrier = HashMap::from([
        (
            "baggage".to_string(),
            "user_id=21,tenant=theirs".to_string(),
        ),
        (
            "traceparent".to_string(),
            format!("00-{TRACE_ID}-00f067aa0ba902b7-01"),
        ),
    ]);
    let seen = runtime.block_on(async {
        let consumer = Context::new().run(|| {
            let _ = TENANT.set("spawner's".to_string());
            tokio::spawn(async move {
                let cx = composite().extract(&carrier);
                let context = extracted(&cx).unwrap();
                async {
                    // A task spawned in it inherits its values too.
                    let values = tokio::spawn(async { (TENANT.get(), USER_ID.get()) })
                        .await
                        .unwrap();
                    (values, trace_id(&opentelemetry::Context::current()))
                }
                .with_context(context)
                .await
            })
        });
        consumer.await.unwrap()
    });
    // The spawner's tenant wins over the carrier's, as the current context's values do, and
    // the extracted context runs with the trace the carrier brought.
    assert_eq!(
        seen,
        (
            (Some("spawner's".to_string()), Some(21)),
            TRACE_ID.to_string()
        )
    );
}

#[test]
fn it_fits_in_a_composite_and_names_its_field() {
    fn send_sync<T: Send + Sync + 'static>(_: &T) {}
    let propagator = BaggagePropagator::default();
    send_sync(&propagator);
    assert_eq!(propagator.fields().collect::<Vec<_>>(), ["baggage"]);
    let mut fields: Vec<String> = composite().fields().map(str::to_string).collect();
    fields.sort();
    assert_eq!(fields, ["baggage", "traceparent", "tracestate"]);
}

proptest::proptest! {
    /// Whatever the header, the propagator does not panic, and it refuses exactly what
    /// `contextvars::baggage::extract` refuses, with the same error.
    #[test]
    fn any_header_is_handled_as_extract_handles_it(header in "[ -~é,;=%]{0,64}") {
        let carrier = HashMap::from([("baggage".to_string(), header)]);
        let cx = Context::new().run(|| BaggagePropagator::new().extract(&carrier));
        let expected = Context::new().run(|| extract(&carrier).err());
        proptest::prop_assert_eq!(extract_error(&cx), expected.as_ref());
        proptest::prop_assert!(extracted(&cx).is_some());
    }
}
