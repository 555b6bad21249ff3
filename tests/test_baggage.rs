//! Baggage in process: variables declared with `#[context_var(baggage = "…")]` are read
//! from a request's `baggage` header, typed, by `ContextLayer::accept_baggage`, and written
//! into outgoing requests by `inject` and `BaggageLayer`; unclaimed entries are kept and
//! forwarded; every bad input gets its answer with nothing set; the metadata map is
//! copy-on-write, inherited, logged and propagated only when opted in.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http;
use axum::routing::get;
use contextvars::baggage::{BaggageError, MAX_BYTES, MAX_ENTRIES, claimed_keys, inject};
use contextvars::metadata::{
    MetadataFlags, get_all_metadata, get_metadata, set_metadata, set_metadata_with,
};
use contextvars::tower::{BaggageLayer, ContextLayer};
use contextvars::{Context, FutureExt, context_var};
use http_body_util::BodyExt;
use proptest::prelude::*;
use tower::{Layer, Service, ServiceExt, service_fn};

#[context_var(baggage = "tenant")]
static TENANT: String;

#[context_var(baggage = "user_id")]
static USER_ID: u64;

/// A default does not count: only a value set in the context is sent.
#[context_var(baggage = "retries")]
static RETRIES: u8 = 3;

/// Not marked: never sent, never read from a header.
#[context_var]
static SECRET: String;

/// The handler: what the request's context holds.
async fn seen() -> String {
    serde_json::json!({
        "tenant": TENANT.get(),
        "user_id": USER_ID.get(),
        "retries": RETRIES.get(),
        "metadata": get_all_metadata(),
    })
    .to_string()
}

fn app(layer: ContextLayer) -> Router {
    Router::new()
        .route("/", get(seen))
        .layer(layer.accept_baggage())
}

fn request(baggage: &[&str]) -> Request {
    let mut request = Request::get("/");
    for value in baggage {
        request = request.header("baggage", *value);
    }
    request.body(Body::empty()).unwrap()
}

async fn call(app: Router, request: Request) -> (u16, serde_json::Value) {
    let response = app.oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).expect("a JSON body"))
}

#[test]
fn every_marked_variable_is_claimed_under_its_key() {
    assert_eq!(
        claimed_keys(),
        [
            ("retries", "RETRIES"),
            ("tenant", "TENANT"),
            ("user_id", "USER_ID")
        ]
    );
}

#[tokio::test]
async fn a_request_gets_its_claimed_variables_typed_and_keeps_the_rest_as_metadata() {
    let (status, json) = call(
        app(ContextLayer::new()),
        request(&[
            "tenant=acme%20corp, user_id = 42",
            "region=eu-west;ttl=60,retries=5",
        ]),
    )
    .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["tenant"], "acme corp");
    assert_eq!(json["user_id"], 42);
    assert_eq!(json["retries"], 5);
    assert_eq!(json["metadata"], serde_json::json!({"region": "eu-west"}));

    // An empty header (as some proxies send) is no entries, not a bad one.
    let (status, json) = call(app(ContextLayer::new()), request(&["", "tenant=x"])).await;
    assert_eq!(
        (status, &json["tenant"]),
        (200, &serde_json::json!("x")),
        "{json}"
    );

    // A request without the header sees nothing of the previous one.
    let (status, json) = call(app(ContextLayer::new()), request(&[])).await;
    assert_eq!(status, 200);
    assert_eq!(json["tenant"], serde_json::Value::Null);
    assert_eq!(json["retries"], 3);
}

/// Each bad input, with the entry its answer must name (`None`: the header as a whole).
fn bad_inputs() -> Vec<(String, Option<&'static str>)> {
    vec![
        ("tenant=acme,user_id=forty-two".into(), Some("user_id")),
        ("user_id=-1".into(), Some("user_id")),
        ("tenant=a,tenant=%zz".into(), Some("tenant")),
        ("tenant=acme,,user_id=1".into(), Some("")),
        ("tenant".into(), Some("tenant")),
        ("ten ant=x".into(), Some("ten ant=x")),
        ("tenant=\"quoted\"".into(), Some("tenant=\"quoted\"")),
        ("tenant=100%".into(), Some("tenant")),
        ("tenant=%zz".into(), Some("tenant")),
        ("tenant=%C3%28".into(), Some("tenant")),
        ("region=x;=v".into(), Some("region")),
        ("region=x;;".into(), Some("region")),
        ("region=x;src=%4".into(), Some("region")),
        (format!("tenant={}", "x".repeat(MAX_BYTES)), None),
        (vec!["k=v"; MAX_ENTRIES + 1].join(","), None),
    ]
}

#[tokio::test]
async fn each_bad_input_is_a_json_400_naming_the_entry_and_nothing_runs() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let app = Router::new()
        .route(
            "/",
            get(move || {
                counted.fetch_add(1, Ordering::Relaxed);
                seen()
            }),
        )
        .layer(ContextLayer::new().accept_baggage());
    for (header, entry) in bad_inputs() {
        let (status, json) = call(app.clone(), request(&[&header])).await;
        assert_eq!(status, 400, "{header:?}: {json}");
        let error = json["error"].as_str().expect("an error message");
        assert!(error.starts_with("bad baggage header"), "{error}");
        match entry {
            Some(entry) => assert_eq!(json["entry"], entry, "{header:?}: {json}"),
            None => assert_eq!(json["entry"], serde_json::Value::Null, "{json}"),
        }
    }
    // A header that is not text (bytes past ASCII).
    let mut not_text = request(&[]);
    not_text.headers_mut().insert(
        "baggage",
        http::HeaderValue::from_bytes(b"tenant=\xC3\xA9").unwrap(),
    );
    let (status, json) = call(app.clone(), not_text).await;
    assert_eq!(status, 400, "{json}");
    assert_eq!(calls.load(Ordering::Relaxed), 0, "the handler never ran");
}

#[tokio::test]
async fn a_rejected_header_sets_nothing_not_even_its_good_entries() {
    // The inner service sees the context only if it runs: check with a layer whose policy
    // ignores, against one that rejects, on the same input.
    let seen_tenant = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen_tenant);
    let inner = service_fn(move |_: Request| {
        record
            .lock()
            .unwrap()
            .push((TENANT.get(), get_metadata("region")));
        async { Ok::<_, Infallible>(http::Response::new(Body::empty())) }
    });
    let header = "tenant=acme,region=eu,user_id=nope";
    let rejecting = ContextLayer::new().accept_baggage().layer(inner.clone());
    let response = rejecting.oneshot(request(&[header])).await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(seen_tenant.lock().unwrap().is_empty());

    let reports = Arc::new(Mutex::new(Vec::new()));
    let reported = Arc::clone(&reports);
    let ignoring = ContextLayer::new()
        .accept_baggage()
        .ignore_bad_entries(move |err: &BaggageError| {
            // The callback runs in the request's context.
            reported
                .lock()
                .unwrap()
                .push((err.key().map(str::to_owned), TENANT.get()));
        })
        .layer(inner);
    let response = ignoring.oneshot(request(&[header])).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        *seen_tenant.lock().unwrap(),
        [(Some("acme".to_string()), Some("eu".to_string()))]
    );
    assert_eq!(
        *reports.lock().unwrap(),
        [(Some("user_id".to_string()), None)]
    );
}

#[tokio::test]
async fn reject_with_answers_a_bad_header_as_the_application_says() {
    let app = Router::new().route("/", get(seen)).layer(
        ContextLayer::new()
            .accept_baggage()
            .reject_with(|err: &BaggageError| {
                let mut response = http::Response::new(Body::from(format!(
                    "refused: {}",
                    err.key().unwrap_or("-")
                )));
                *response.status_mut() = http::StatusCode::UNPROCESSABLE_ENTITY;
                response
            }),
    );
    let response = app.clone().oneshot(request(&["user_id=x"])).await.unwrap();
    assert_eq!(response.status(), 422);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "refused: user_id");
    // Good headers are not affected.
    let (status, json) = call(app, request(&["user_id=3"])).await;
    assert_eq!((status, &json["user_id"]), (200, &serde_json::json!(3)));
}

#[tokio::test]
async fn ignoring_drops_a_header_over_the_limits_whole() {
    let reports = Arc::new(AtomicUsize::new(0));
    let reported = Arc::clone(&reports);
    let app = Router::new().route("/", get(seen)).layer(
        ContextLayer::new()
            .accept_baggage()
            .ignore_bad_entries(move |_| {
                reported.fetch_add(1, Ordering::Relaxed);
            }),
    );
    let mut header = vec!["k=v"; MAX_ENTRIES].join(",");
    header.push_str(",tenant=acme");
    let (status, json) = call(app, request(&[&header])).await;
    assert_eq!(status, 200);
    assert_eq!(json["tenant"], serde_json::Value::Null);
    assert_eq!(json["metadata"], serde_json::json!({}));
    assert_eq!(reports.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_hook_can_drop_incoming_baggage_at_a_trust_boundary() {
    let edge = ContextLayer::new().on_request(|request: &mut Request| {
        request.headers_mut().remove("baggage");
    });
    let app = Router::new()
        .route("/", get(seen))
        .layer(edge.accept_baggage());
    let (status, json) = call(app, request(&["tenant=mallory,user_id=1"])).await;
    assert_eq!(status, 200);
    assert_eq!(json["tenant"], serde_json::Value::Null);
    assert_eq!(json["user_id"], serde_json::Value::Null);
}

#[test]
fn inject_writes_set_variables_and_opted_in_metadata_merged_with_the_header() {
    let mut context = Context::new();
    let headers = context.run(|| {
        let _ = TENANT.set("acme, inc.".to_string());
        let _ = USER_ID.set(7);
        let _ = SECRET.set("hunter2".to_string());
        set_metadata_with("region", "eu", MetadataFlags::BAGGAGE);
        set_metadata_with("feature", "x", MetadataFlags::LOG);
        set_metadata("private", "y");
        let mut headers = http::HeaderMap::new();
        // Already on the request: kept, and wins over the context's `user_id`.
        headers.insert("baggage", "user_id=9;p, other=1".parse().unwrap());
        assert_eq!(inject(&mut headers), 0);
        headers
    });
    assert_eq!(headers.get_all("baggage").iter().count(), 1);
    assert_eq!(
        headers["baggage"],
        "user_id=9;p, other=1,tenant=acme%2C%20inc.,region=eu"
    );
    // Nothing set: nothing written, and the headers are left alone.
    let mut empty = http::HeaderMap::new();
    assert_eq!(Context::new().run(|| inject(&mut empty)), 0);
    assert!(empty.is_empty());
}

#[test]
fn inject_stays_within_the_limits_and_counts_what_it_leaves_out() {
    let mut context = Context::new();
    let headers = context.run(|| {
        for i in 0..200 {
            set_metadata_with(format!("k{i:03}"), "v", MetadataFlags::BAGGAGE);
        }
        let mut headers = http::HeaderMap::new();
        assert_eq!(inject(&mut headers), 20);
        headers
    });
    let header = headers["baggage"].to_str().unwrap();
    assert_eq!(header.split(',').count(), MAX_ENTRIES);

    let mut context = Context::new();
    let headers = context.run(|| {
        for i in 0..3 {
            set_metadata_with(format!("big{i}"), "x".repeat(3000), MetadataFlags::BAGGAGE);
        }
        let mut headers = http::HeaderMap::new();
        assert_eq!(inject(&mut headers), 1);
        headers
    });
    assert!(headers["baggage"].len() <= MAX_BYTES);
}

#[tokio::test]
async fn values_round_trip_through_the_header_unchanged() {
    for tenant in ["plain", "a b,c;d", "100%", "é✓\"\\", "", "=x="] {
        let mut headers = http::HeaderMap::new();
        Context::new().run(|| {
            let _ = TENANT.set(tenant.to_string());
            let _ = USER_ID.set(u64::MAX);
            inject(&mut headers);
        });
        let mut request = request(&[]);
        *request.headers_mut() = headers;
        let (status, json) = call(app(ContextLayer::with_base(Context::new())), request).await;
        assert_eq!(status, 200, "{tenant:?}: {json}");
        assert_eq!(json["tenant"], tenant);
        assert_eq!(json["user_id"], u64::MAX);
    }
}

#[tokio::test]
async fn baggage_layer_writes_the_context_of_the_call() {
    let client = BaggageLayer::new().layer(service_fn(|request: http::Request<()>| async move {
        let header = request.headers().get("baggage").cloned();
        Ok::<_, Infallible>(header.map(|h| h.to_str().unwrap().to_owned()))
    }));
    // The service is called where the future is polled: in the context it runs with.
    let sent = client
        .clone()
        .oneshot(http::Request::new(()))
        .with_context(Context::new().with_value(&TENANT, "acme".to_string()));
    assert_eq!(sent.await.unwrap().as_deref(), Some("tenant=acme"));
    let sent = client
        .clone()
        .oneshot(http::Request::new(()))
        .with_context(Context::new());
    assert_eq!(sent.await.unwrap(), None);
}

#[tokio::test]
async fn received_entries_are_forwarded_by_the_next_hop() {
    // The handler calls a downstream service through `BaggageLayer`; it answers with the
    // header it got.
    let downstream =
        BaggageLayer::new().layer(service_fn(|request: http::Request<()>| async move {
            let header = request.headers().get("baggage").cloned();
            Ok::<_, Infallible>(
                header
                    .map(|h| h.to_str().unwrap().to_owned())
                    .unwrap_or_default(),
            )
        }));
    let app = Router::new()
        .route(
            "/",
            get(move || {
                let mut downstream = downstream.clone();
                async move {
                    let _ = USER_ID.set(USER_ID.get().unwrap_or(0) + 1);
                    downstream
                        .ready()
                        .await
                        .unwrap()
                        .call(http::Request::new(()))
                        .await
                        .unwrap()
                }
            }),
        )
        .layer(ContextLayer::new().accept_baggage());
    let response = app
        .oneshot(request(&["user_id=1,trace-hint=abc;p=1,tenant=t"]))
        .await
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "tenant=t,user_id=2,trace-hint=abc;p=1");
}

#[tokio::test]
async fn a_header_reads_the_same_whatever_its_form_and_size() {
    // The usual header (plain `key=value` entries, a few of them) and the same entries
    // written otherwise (an escape, whitespace, a second line, many more entries) give the
    // handler the same context.
    let plain = call(
        app(ContextLayer::new()),
        request(&["tenant=acme,user_id=42,region=eu,zone=b"]),
    )
    .await;
    assert_eq!(plain.0, 200, "{}", plain.1);
    assert_eq!(plain.1["tenant"], "acme");
    assert_eq!(plain.1["user_id"], 42);
    assert_eq!(
        plain.1["metadata"],
        serde_json::json!({"region": "eu", "zone": "b"})
    );
    for other in [
        vec!["tenant=%61cme,user_id=42,region=eu,zone=b"],
        vec![" tenant = acme , user_id=42,\tregion=eu,zone=b "],
        vec!["tenant=acme,user_id=42", "region=eu,zone=b"],
    ] {
        assert_eq!(
            call(app(ContextLayer::new()), request(&other)).await,
            plain,
            "{other:?}"
        );
    }
    // More entries than a request usually carries: every one is kept.
    let many: Vec<String> = (0..40).map(|i| format!("k{i}=v{i}")).collect();
    let (status, json) = call(
        app(ContextLayer::new()),
        request(&[&format!("tenant=acme,{}", many.join(","))]),
    )
    .await;
    assert_eq!((status, &json["tenant"]), (200, &serde_json::json!("acme")));
    let metadata = json["metadata"].as_object().expect("a map");
    assert_eq!(metadata.len(), 40, "{json}");
    assert_eq!(metadata["k39"], "v39");
}

#[tokio::test]
async fn a_repeated_key_is_accepted_and_its_last_value_wins() {
    let (status, json) = call(
        app(ContextLayer::new()),
        request(&["tenant=first,user_id=1,region=a", "tenant=second,region=b"]),
    )
    .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["tenant"], "second");
    assert_eq!(json["user_id"], 1);
    assert_eq!(json["metadata"], serde_json::json!({"region": "b"}));
}

#[test]
fn inject_never_removes_or_rewrites_a_line_it_did_not_write() {
    let inject_tenant = |headers: &mut http::HeaderMap| {
        Context::new().run(|| {
            let _ = TENANT.set("acme".to_string());
            assert_eq!(inject(headers), 0);
        });
    };
    let lines = |headers: &http::HeaderMap| -> Vec<Vec<u8>> {
        headers
            .get_all("baggage")
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect()
    };
    // A first line that is not UTF-8 text (a byte past ASCII, as some clients send): kept
    // byte for byte, as is the line after it; ours goes on a line of its own, last.
    let mut headers = http::HeaderMap::new();
    headers.append(
        "baggage",
        http::HeaderValue::from_bytes(b"legacy=caf\xE9").unwrap(),
    );
    headers.append("baggage", http::HeaderValue::from_static("other=1"));
    inject_tenant(&mut headers);
    assert_eq!(
        lines(&headers),
        [&b"legacy=caf\xE9"[..], b"other=1", b"tenant=acme"]
    );

    // Text lines: the first keeps its exact text (spacing included) with our entries after
    // it (OpenTelemetry reads only the first line); the others are untouched.
    let mut headers = http::HeaderMap::new();
    headers.append("baggage", http::HeaderValue::from_static(" a = 1 ;p "));
    headers.append("baggage", http::HeaderValue::from_static("b=2,,"));
    inject_tenant(&mut headers);
    assert_eq!(lines(&headers), [&b" a = 1 ;p ,tenant=acme"[..], b"b=2,,"]);

    // A key a line already holds, even one that is not text, is not written again.
    let mut headers = http::HeaderMap::new();
    headers.append(
        "baggage",
        http::HeaderValue::from_bytes(b"tenant=caf\xE9").unwrap(),
    );
    inject_tenant(&mut headers);
    assert_eq!(lines(&headers), [&b"tenant=caf\xE9"[..]]);
}

#[tokio::test]
async fn a_claimed_entry_is_forwarded_with_its_properties_and_escapes() {
    let app = Router::new()
        .route(
            "/",
            get(|| async {
                let mut headers = http::HeaderMap::new();
                inject(&mut headers);
                let forwarded = headers["baggage"].to_str().unwrap().to_owned();
                // Once the application changes the value, it is written afresh.
                let _ = TENANT.set("changed".to_string());
                let mut headers = http::HeaderMap::new();
                inject(&mut headers);
                format!("{forwarded}|{}", headers["baggage"].to_str().unwrap())
            }),
        )
        .layer(ContextLayer::new().accept_baggage());
    let response = app
        .oneshot(request(&[
            "tenant=a%3db%2B;ttl=60;origin=eu%2Cwest,note=x=y;p",
        ]))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        "tenant=a%3db%2B;ttl=60;origin=eu%2Cwest,note=x=y;p|tenant=changed,note=x=y;p"
    );
}

#[tokio::test]
async fn metadata_is_copy_on_write_and_inherited_by_spawned_tasks() {
    let mut parent = Context::new();
    let child = parent.run(|| {
        set_metadata("plan", "gold");
        let child = contextvars::spawn(async {
            let before = get_metadata("plan");
            set_metadata("plan", "child");
            (before, get_metadata("plan"))
        });
        set_metadata("plan", "platinum");
        child
    });
    assert_eq!(
        child.await.unwrap(),
        (Some("gold".into()), Some("child".into()))
    );
    assert_eq!(
        parent.run(|| get_metadata("plan")).as_deref(),
        Some("platinum")
    );
}

#[test]
fn metadata_entries_opted_into_logs_are_fields_of_their_own() {
    use tracing_subscriber::fmt::format;
    use tracing_subscriber::prelude::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(bytes)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let (text, json) = (Buffer::default(), Buffer::default());
    let (text_out, json_out) = (text.clone(), json.clone());
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(contextvars::tracing::ContextFields::text(
                    format().without_time(),
                ))
                .with_writer(move || text.clone()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(contextvars::tracing::ContextFields::json(
                    format().json().without_time(),
                ))
                .with_writer(move || json.clone()),
        );
    tracing::subscriber::with_default(subscriber, || {
        Context::new().run(|| {
            set_metadata_with("feature", "new \"checkout\"", MetadataFlags::LOG);
            set_metadata_with("region", "eu", MetadataFlags::LOG | MetadataFlags::BAGGAGE);
            set_metadata("card", "4111");
            tracing::info!("paid");
        });
    });
    let text = String::from_utf8(text_out.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.trim_end()
            .ends_with(r#"paid feature="new \"checkout\"" region="eu""#),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&json_out.0.lock().unwrap()).expect("one JSON line");
    assert_eq!(
        json["@contextvars"],
        serde_json::json!({"feature": "new \"checkout\"", "region": "eu"})
    );
    assert!(!text.contains("4111"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Any header an HTTP stack can deliver gets an answer: a 200 or a JSON 400, never a
    /// panic; under the ignoring policy, always a 200.
    #[test]
    fn no_header_panics_the_server(bytes in proptest::collection::vec(
        prop_oneof![
            Just(b','), Just(b';'), Just(b'='), Just(b'%'), Just(b' '), Just(b'"'),
            Just(b't'), Just(b'1'), Just(b'F'), Just(0xC3_u8), Just(0x80_u8),
            any::<u8>(),
        ],
        0..64,
    )) {
        let Ok(value) = http::HeaderValue::from_bytes(&bytes) else {
            return Ok(());
        };
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let mut req = request(&[]);
            req.headers_mut().insert("baggage", value.clone());
            let response = app(ContextLayer::new()).oneshot(req).await.unwrap();
            prop_assert!(matches!(response.status().as_u16(), 200 | 400));

            let mut req = request(&[]);
            req.headers_mut().insert("baggage", value);
            let lenient = Router::new()
                .route("/", get(seen))
                .layer(ContextLayer::new().accept_baggage().ignore_bad_entries(|_| {}));
            let response = lenient.oneshot(req).await.unwrap();
            prop_assert_eq!(response.status().as_u16(), 200);
            Ok(())
        })?;
    }
}

/// Calls `service` with a `baggage` header and, before polling the call's future, polls other
/// futures on this thread, each in a context of its own for the first time: none of them may
/// read what the header or the hook set, which the handler then reads.
#[tokio::test]
async fn what_the_header_sets_for_the_handlers_reads_is_never_read_by_another_future() {
    let handler = service_fn(|_: Request| async {
        let seen = format!("{:?}", (TENANT.get(), USER_ID.get(), SECRET.get()));
        Ok::<_, Infallible>(http::Response::new(seen))
    });
    for hook_sets_tenant in [false, true] {
        let layer = ContextLayer::new()
            .on_request(move |_: &mut Request| {
                let _ = SECRET.set("the hook's".into());
                if hook_sets_tenant {
                    let _ = TENANT.set("the app's".into());
                }
            })
            .accept_baggage();
        let mut service = layer.layer(handler);
        let pending = service
            .ready()
            .await
            .unwrap()
            .call(request(&["tenant=acme,user_id=42"]));
        let read = || async { (TENANT.get(), USER_ID.get(), SECRET.get()) };
        assert_eq!(
            read().with_context(Context::new()).await,
            (None, None, None)
        );
        let task = contextvars::spawn(read());
        assert_eq!(task.await.unwrap(), (None, None, None));
        let own = Context::new().with_value(&USER_ID, 7);
        assert_eq!(read().with_context(own).await, (None, Some(7), None));
        let tenant = if hook_sets_tenant {
            "the app's"
        } else {
            "acme"
        };
        let seen = (Some(tenant), Some(42), Some("the hook's"));
        assert_eq!(pending.await.unwrap().into_body(), format!("{seen:?}"));
    }
}
