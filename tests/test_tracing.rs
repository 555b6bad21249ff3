//! The tracing integration: with `ContextFields`, tracing-subscriber's text and JSON lines carry
//! the context variables that opted into logs (and never the others), from tasks, blocking
//! tasks and threads that inherited the context, and from requests served through the layer.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use contextvars::metadata::{MetadataFlags, set_metadata_with};
use contextvars::tracing::{ContextFields, JSON_KEY, SpanContextLayer, for_each_logged};
use contextvars::{Context, FutureExt, context_var};
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

#[context_var(name = "tenant", log)]
static TENANT: String;

#[context_var(name = "request_id", log)]
static REQUEST_ID: String;

#[context_var(log)]
static ATTEMPT: u32 = 1;

#[derive(Debug)]
#[allow(dead_code, reason = "read through `Debug` only")]
struct User {
    id: u64,
    name: &'static str,
}

#[context_var(name = "user", log)]
static USER: Arc<User>;

/// Not opted in: its value must never reach a log.
#[context_var(name = "api_key")]
static API_KEY: String;

const SECRET: &str = "sk-live-do-not-log";

/// A buffer every test's events go to, one per format.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// The lines that contain `marker` (each test logs its own marker).
    fn lines(&self, marker: &str) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            !text.contains(SECRET),
            "a variable that did not opt in was logged"
        );
        text.lines()
            .filter(|line| line.contains(marker))
            .map(String::from)
            .collect()
    }
}

/// The process-wide subscriber: a text layer and a JSON layer, both wrapped.
fn captures() -> &'static (Capture, Capture) {
    static CAPTURES: OnceLock<(Capture, Capture)> = OnceLock::new();
    CAPTURES.get_or_init(|| {
        let (text, json) = (Capture::default(), Capture::default());
        let (t, j) = (text.clone(), json.clone());
        tracing_subscriber::registry()
            .with(
                fmt::layer()
                    .map_event_format(ContextFields::text)
                    .with_writer(move || t.clone()),
            )
            .with(
                fmt::layer()
                    .json()
                    .map_event_format(ContextFields::json)
                    .with_writer(move || j.clone()),
            )
            .init();
        (text, json)
    })
}

fn text_lines(marker: &str) -> Vec<String> {
    captures().0.lines(marker)
}

fn json_lines(marker: &str) -> Vec<serde_json::Value> {
    captures()
        .1
        .lines(marker)
        .iter()
        .map(|line| serde_json::from_str(line).expect(line))
        .collect()
}

#[test]
fn opted_in_variables_are_fields_of_text_and_json_lines_and_others_never_are() {
    captures();
    let _tenant = TENANT.set("acme".into());
    let _request = REQUEST_ID.set("r-1".into());
    let _attempt = ATTEMPT.set(3);
    let _user = USER.set(Arc::new(User { id: 7, name: "ann" }));
    let _key = API_KEY.set(SECRET.into());
    tracing::info!(amount = 12, "marker-basic");

    let [text] = &text_lines("marker-basic")[..] else {
        panic!("one text line")
    };
    for field in [
        r#"tenant="acme""#,
        r#"request_id="r-1""#,
        "ATTEMPT=3",
        r#"user=User { id: 7, name: "ann" }"#,
    ] {
        assert!(text.contains(&format!(" {field}")), "{field} in {text}");
    }
    assert!(
        text.contains("marker-basic amount=12 "),
        "event fields come first: {text}"
    );
    assert!(!text.contains("api_key"), "{text}");

    let [json] = &json_lines("marker-basic")[..] else {
        panic!("one JSON line")
    };
    let context = &json[JSON_KEY];
    assert_eq!(context["tenant"], "acme");
    assert_eq!(context["request_id"], "r-1");
    assert_eq!(context["ATTEMPT"], 3, "numbers stay numbers");
    assert_eq!(
        context["user"], r#"User { id: 7, name: "ann" }"#,
        "others: their Debug"
    );
    assert_eq!(context.as_object().unwrap().len(), 4, "{json}");
    assert_eq!(json["fields"]["message"], "marker-basic");
    assert_eq!(json["fields"]["amount"], 12);
}

#[test]
fn a_line_without_logged_variables_is_left_as_the_inner_format_writes_it() {
    captures();
    let _key = API_KEY.set(SECRET.into());
    tracing::info!("marker-nothing");
    let [text] = &text_lines("marker-nothing")[..] else {
        panic!("one text line")
    };
    assert!(text.ends_with("marker-nothing"), "{text}");
    let [json] = &json_lines("marker-nothing")[..] else {
        panic!("one JSON line")
    };
    assert!(json.get(JSON_KEY).is_none(), "{json}");
}

#[test]
fn json_values_are_escaped() {
    captures();
    let _tenant = TENANT.set("a \"quoted\"\ttenant\n\\ with \u{1} control".into());
    tracing::info!("marker-escape");
    let [json] = &json_lines("marker-escape")[..] else {
        panic!("one JSON line")
    };
    assert_eq!(
        json[JSON_KEY]["tenant"],
        "a \"quoted\"\ttenant\n\\ with \u{1} control"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_blocking_tasks_and_threads_that_inherited_the_context_log_its_fields() {
    captures();
    let (spawned, blocking, plain_task) = Context::new()
        .with_value(&TENANT, "inherited".into())
        .with_value(&API_KEY, SECRET.into())
        .run(|| {
            let spawned = contextvars::spawn(async {
                tokio::task::yield_now().await;
                tracing::info!(from = "spawned", "marker-inherit");
            });
            let blocking = contextvars::spawn_blocking(|| {
                tracing::info!(from = "blocking", "marker-inherit");
            });
            let thread = contextvars::thread::spawn(|| {
                tracing::info!(from = "thread", "marker-inherit");
            });
            // Spawned without the context: no fields.
            let plain_task = tokio::spawn(async {
                tracing::info!(from = "plain task", "marker-inherit");
            });
            let plain_thread = std::thread::spawn(|| {
                tracing::info!(from = "plain thread", "marker-inherit");
            });
            thread.join().unwrap();
            plain_thread.join().unwrap();
            (spawned, blocking, plain_task)
        });
    spawned.await.unwrap();
    blocking.await.unwrap();
    plain_task.await.unwrap();

    let lines = json_lines("marker-inherit");
    assert_eq!(lines.len(), 5);
    for json in lines {
        let tenant = json[JSON_KEY]["tenant"].as_str();
        match json["fields"]["from"].as_str().unwrap() {
            "spawned" | "blocking" | "thread" => assert_eq!(tenant, Some("inherited"), "{json}"),
            _ => assert!(json.get(JSON_KEY).is_none(), "{json}"),
        }
    }
    let texts = text_lines("marker-inherit");
    let with_fields = texts
        .iter()
        .filter(|l| l.ends_with(r#"tenant="inherited""#))
        .count();
    assert_eq!(with_fields, 3, "{texts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tasks_each_log_their_own_values() {
    captures();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let context = Context::new().with_value(&TENANT, format!("t{i}"));
            tokio::spawn(
                async move {
                    for step in 0..3 {
                        if (i + step) % 3 == 0 {
                            tokio::task::yield_now().await;
                        }
                        tracing::info!(expected = format!("t{i}"), "marker-concurrent");
                    }
                }
                .with_context(context),
            )
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let lines = json_lines("marker-concurrent");
    assert_eq!(lines.len(), 600);
    for json in lines {
        assert_eq!(
            json[JSON_KEY]["tenant"], json["fields"]["expected"],
            "{json}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_served_through_the_layer_log_their_own_values() {
    use axum::body::Body;
    use axum::extract::Request;
    use tower::{Layer, ServiceExt, service_fn};

    captures();
    let layer = contextvars::tower::ContextLayer::new().on_request(|request: &mut Request| {
        let id = request.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let _ = REQUEST_ID.set(id);
    });
    let service = layer.layer(service_fn(|_: Request| async {
        tokio::task::yield_now().await;
        tracing::info!(expected = REQUEST_ID.get().unwrap(), "marker-layer");
        Ok::<_, std::convert::Infallible>(())
    }));
    let requests: Vec<_> = (0..50)
        .map(|i| {
            let request = Request::get("/")
                .header("x-request-id", format!("req-{i}"))
                .body(Body::empty())
                .unwrap();
            tokio::spawn(service.clone().oneshot(request))
        })
        .collect();
    for request in requests {
        request.await.unwrap().unwrap();
    }
    let lines = json_lines("marker-layer");
    assert_eq!(lines.len(), 50);
    for json in lines {
        assert_eq!(
            json[JSON_KEY]["request_id"], json["fields"]["expected"],
            "{json}"
        );
    }
}

#[test]
fn for_each_logged_lists_only_opted_in_variables() {
    let _tenant = TENANT.set("acme".into());
    let _key = API_KEY.set(SECRET.into());
    let mut seen = Vec::new();
    for_each_logged(|name, value| seen.push(format!("{name}={value:?}")));
    assert_eq!(seen, [r#"tenant="acme""#]);
}

/// The members of a JSON object in the order written, duplicates included (`serde_json`'s map
/// keeps only the last of a repeated key).
struct Members(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// Parses a line, checking that no key appears twice at its top level, both by parsing and by
/// scanning the raw text for each key.
fn parse_without_duplicates(line: &str) -> serde_json::Map<String, serde_json::Value> {
    let Members(members) = serde_json::from_str(line).expect(line);
    let mut map = serde_json::Map::new();
    for (key, value) in members {
        let raw = format!("{}:", serde_json::to_string(&key).unwrap());
        assert_eq!(line.matches(&raw).count(), 1, "{raw} once in {line}");
        assert!(
            map.insert(key.clone(), value).is_none(),
            "`{key}` twice in {line}"
        );
    }
    map
}

/// A subscriber for this thread only, writing flattened JSON lines (and, with `span_events`,
/// span close lines) into a buffer of its own.
fn flattened_json(span_layer: bool) -> (impl tracing::Subscriber + Send + Sync, Capture) {
    let out = Capture::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::registry()
        .with(span_layer.then_some(SpanContextLayer))
        .with(
            fmt::layer()
                .json()
                .flatten_event(true)
                .with_span_events(fmt::format::FmtSpan::CLOSE)
                .map_event_format(ContextFields::json)
                .with_writer(move || writer.clone()),
        );
    (subscriber, out)
}

#[test]
fn flattened_json_keeps_an_event_field_named_context_and_never_writes_a_key_twice() {
    let (subscriber, out) = flattened_json(false);
    tracing::subscriber::with_default(subscriber, || {
        let _tenant = TENANT.set("acme".into());
        tracing::info!(context = "the event's own", "marker-flat");
        // Only a string literal can name a field like the member: it then takes one more `@`.
        tracing::info!(
            "@contextvars" = "a literal",
            context = 2,
            "marker-flat-literal"
        );
    });
    let lines = out.lines("marker-flat");
    let [plain, literal] = &lines[..] else {
        panic!("two lines: {lines:?}")
    };
    let plain = parse_without_duplicates(plain);
    assert_eq!(plain["context"], "the event's own");
    assert_eq!(plain[JSON_KEY]["tenant"], "acme");
    let literal = parse_without_duplicates(literal);
    assert_eq!(literal["context"], 2);
    assert_eq!(literal[JSON_KEY], "a literal");
    assert_eq!(literal[&format!("@{JSON_KEY}")]["tenant"], "acme");
}

/// A span made in a context where `TENANT` is `creator`, entered under another context, then
/// closed under a third, and another dropped by a task without a context; returns the
/// tenants their close lines carry, and the tenant of an event inside the first span.
fn span_lines(span_layer: bool) -> (Option<String>, Option<String>, Option<String>) {
    let (subscriber, out) = flattened_json(span_layer);
    tracing::subscriber::with_default(subscriber, || {
        let creator = Context::new().with_value(&TENANT, "creator".into());
        let (span, moved) = creator.clone().run(|| {
            (
                tracing::info_span!("marker-span-closed-elsewhere"),
                tracing::info_span!("marker-span-moved-to-a-task"),
            )
        });
        Context::new()
            .with_value(&TENANT, "enterer".into())
            .run(|| span.in_scope(|| tracing::info!("marker-span-event")));
        Context::new()
            .with_value(&TENANT, "closer".into())
            .run(|| drop(span));
        // Dropped by a task spawned without a context, as a server's connection task.
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async { tokio::spawn(async move { drop(moved) }).await.unwrap() });
    });
    let tenant = |marker: &str| {
        let lines = out.lines(marker);
        let close = |line: &&String| line.contains(r#""message":"close""#);
        let lines: Vec<_> = if marker.ends_with("event") {
            lines.iter().filter(|line| !close(line)).collect()
        } else {
            lines.iter().filter(close).collect()
        };
        let [line] = &lines[..] else {
            panic!("one line with {marker}: {lines:?}")
        };
        let json = parse_without_duplicates(line);
        json.get(JSON_KEY)
            .map(|context| context["tenant"].as_str().unwrap().to_string())
    };
    (
        tenant("marker-span-closed-elsewhere"),
        tenant("marker-span-moved-to-a-task"),
        tenant("marker-span-event"),
    )
}

#[test]
fn with_span_context_layer_a_span_close_line_carries_the_context_the_span_was_created_in() {
    let creator = Some("creator".to_string());
    assert_eq!(
        span_lines(true),
        (creator.clone(), creator, Some("enterer".to_string())),
        "close lines: the creating context; events: their own"
    );
    // Without the layer, as documented: the context current where the span is dropped.
    assert_eq!(
        span_lines(false),
        (
            Some("closer".to_string()),
            None,
            Some("enterer".to_string())
        )
    );
}

/// Two more variables named `tenant`, declared in other modules, as two crates or two parts of
/// an application may.
mod billing {
    #[contextvars::context_var(name = "tenant", log)]
    pub(crate) static TENANT: String;
}

mod auth {
    #[contextvars::context_var(name = "tenant", log)]
    pub(crate) static TENANT: &'static str;
}

/// A subscriber for this thread only, with a text layer and a JSON layer, each writing into a
/// buffer of its own.
fn text_and_json() -> (impl tracing::Subscriber + Send + Sync, Capture, Capture) {
    let (text, json) = (Capture::default(), Capture::default());
    let (t, j) = (text.clone(), json.clone());
    let subscriber = tracing_subscriber::registry()
        .with(
            fmt::layer()
                .map_event_format(ContextFields::text)
                .with_writer(move || t.clone()),
        )
        .with(
            fmt::layer()
                .json()
                .map_event_format(ContextFields::json)
                .with_writer(move || j.clone()),
        );
    (subscriber, text, json)
}

/// The members of a line's context object, parsed with its duplicates (the test's values hold
/// no braces, so the object ends at the first `}`).
fn context_members(line: &str) -> Vec<(String, serde_json::Value)> {
    let member = format!("\"{JSON_KEY}\":");
    let start = line.find(&member).expect(line) + member.len();
    let end = start + line[start..].find('}').expect(line);
    let Members(members) = serde_json::from_str(&line[start..=end]).expect(line);
    members
}

/// The `key=value` pairs a text line ends with, after the event's message: every key once.
fn text_keys(line: &str, marker: &str) -> Vec<String> {
    let tail = &line[line.find(marker).expect(line) + marker.len()..];
    let keys: Vec<String> = tail
        .split(' ')
        .filter_map(|pair| pair.split_once('=').map(|(key, _)| key.to_string()))
        .collect();
    for key in &keys {
        assert_eq!(
            keys.iter().filter(|k| *k == key).count(),
            1,
            "`{key}` twice in {line}"
        );
    }
    keys
}

#[test]
fn variables_that_share_a_name_get_distinct_keys_on_text_and_json_lines() {
    let (subscriber, text, json) = text_and_json();
    tracing::subscriber::with_default(subscriber, || {
        let _tenant = TENANT.set("main".into());
        let _billing = billing::TENANT.set("billing".into());
        let _auth = auth::TENANT.set("auth");
        let _request = REQUEST_ID.set("r-9".into());
        tracing::info!("marker-shared-name");
    });

    // Each variable that shares its name is written as `name@path`, path being where it is
    // declared; a name no other variable on the line has stays as it is.
    let expected = [
        ("tenant@test_tracing::TENANT", "main"),
        ("tenant@test_tracing::billing::TENANT", "billing"),
        ("tenant@test_tracing::auth::TENANT", "auth"),
        ("request_id", "r-9"),
    ];

    let [json] = &json.lines("marker-shared-name")[..] else {
        panic!("one JSON line")
    };
    let members = context_members(json);
    assert_eq!(members.len(), 4, "{json}");
    let mut keys: Vec<&str> = members.iter().map(|(key, _)| key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), 4, "a key twice in {json}");
    for (key, value) in expected {
        let found = members.iter().find(|(k, _)| k == key);
        assert_eq!(
            found.map(|(_, v)| v.as_str()),
            Some(Some(value)),
            "{key} in {json}"
        );
    }
    parse_without_duplicates(json);

    let [text] = &text.lines("marker-shared-name")[..] else {
        panic!("one text line")
    };
    let keys = text_keys(text, "marker-shared-name");
    assert_eq!(keys.len(), 4, "{text}");
    assert!(
        keys.is_sorted(),
        "variables in the order of their keys: {text}"
    );
    let json_keys: Vec<&str> = members.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(json_keys, keys, "the same keys in the same order");
    for (key, value) in expected {
        assert!(
            text.contains(&format!(" {key}={value:?}")),
            "{key} in {text}"
        );
    }
}

#[test]
fn a_text_line_never_repeats_a_key_of_the_event_or_of_metadata() {
    let (subscriber, text, json) = text_and_json();
    tracing::subscriber::with_default(subscriber, || {
        Context::new().run(|| {
            let _tenant = TENANT.set("from-context".into());
            let _request = REQUEST_ID.set("r-1".into());
            contextvars::metadata::set_metadata_with(
                "request_id",
                "from-metadata",
                contextvars::metadata::MetadataFlags::LOG,
            );
            tracing::info!(tenant = "from-event", "marker-event-field");
        });
    });

    // The event's own field keeps its name; the variable that shares it takes its path.
    let [text] = &text.lines("marker-event-field")[..] else {
        panic!("one text line")
    };
    let keys = text_keys(text, "marker-event-field");
    assert_eq!(keys.len(), 4, "{text}");
    for field in [
        r#" tenant="from-event""#,
        r#" tenant@test_tracing::TENANT="from-context""#,
        r#" request_id="r-1""#,
        r#" request_id#2="from-metadata""#,
    ] {
        assert!(text.contains(field), "{field} in {text}");
    }

    // In JSON the event's fields and the context's members are apart: only the metadata entry
    // named like a variable needs another key.
    let [json] = &json.lines("marker-event-field")[..] else {
        panic!("one JSON line")
    };
    let members = context_members(json);
    let expected = [
        ("tenant", "from-context"),
        ("request_id", "r-1"),
        ("request_id#2", "from-metadata"),
    ];
    assert_eq!(members.len(), expected.len(), "{json}");
    for (key, value) in expected {
        let found = members.iter().find(|(k, _)| k == key);
        assert_eq!(
            found.map(|(_, v)| v.as_str()),
            Some(Some(value)),
            "{key} in {json}"
        );
    }
}

/// A variable whose name holds a space (the macro accepts any non-empty name).
#[context_var(name = "forged tenant", log)]
static SPACED: String;

/// A variable's name or a metadata key that is not a plain word (a space, `=`, a quote, a
/// newline) is written on a text line so that a `key=value` reader (logfmt) reads each key
/// whole: such characters become `_`, and a key that then equals another is numbered. Without
/// that, `forged tenant="x"` next to `tenant="main"` reads as `tenant` twice.
#[test]
fn a_name_that_is_not_a_plain_word_never_repeats_a_key_on_a_text_line() {
    let (subscriber, text, _json) = text_and_json();
    tracing::subscriber::with_default(subscriber, || {
        Context::new().run(|| {
            let _tenant = TENANT.set("main".into());
            let _spaced = SPACED.set("x".into());
            set_metadata_with("forged tenant", "y", MetadataFlags::LOG);
            set_metadata_with("a=b \"c\"\nd", "z", MetadataFlags::LOG);
            tracing::info!("marker-spaced-name");
        });
    });
    let [line] = &text.lines("marker-spaced-name")[..] else {
        panic!("one text line")
    };
    let keys = text_keys(line, "marker-spaced-name");
    for key in ["tenant", "forged_tenant", "forged_tenant#2", "a_b__c__d"] {
        assert!(keys.iter().any(|k| k == key), "`{key}` in {line}");
    }
    assert_eq!(keys.len(), 4, "{line}");
}

/// Logs from its `Drop`.
struct LogsOnDrop(&'static str);

impl Drop for LogsOnDrop {
    fn drop(&mut self) {
        tracing::info!("{}", self.0);
    }
}

#[context_var]
static LOGS_ON_DROP: LogsOnDrop;

/// B24 meets the tracing integration: a value whose `Drop` logs, dropped when a
/// `contextvars::spawn` task ends (with the hooks installed or not) and, under the hooks, when
/// a plain task that inherited it ends after its owner: the line carries the tenant of the
/// context the value was dropped in, its own.
#[test]
fn a_line_logged_from_a_values_drop_carries_the_context_it_is_dropped_in() {
    let (subscriber, text, _json) = text_and_json();
    tracing::subscriber::with_default(subscriber, || {
        #[cfg_attr(not(all(tokio_unstable, feature = "hooks")), allow(unused_mut))]
        let mut runtimes = vec![(
            "plain",
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        )];
        #[cfg(all(tokio_unstable, feature = "hooks"))]
        runtimes.push((
            "hooks",
            contextvars::hooks::install(&mut tokio::runtime::Builder::new_current_thread())
                .enable_all()
                .build()
                .unwrap(),
        ));
        for (name, runtime) in runtimes {
            runtime.block_on(async move {
                let _tenant = TENANT.set("the awaiter".into());
                contextvars::spawn(async move {
                    let _ = TENANT.set(format!("{name}-task"));
                    let _ = LOGS_ON_DROP.set(LogsOnDrop("marker-drop-log-task"));
                    tokio::task::yield_now().await;
                })
                .await
                .unwrap();
                if name == "hooks" {
                    let (go, wait) = tokio::sync::oneshot::channel::<()>();
                    #[allow(clippy::async_yields_async)]
                    let owner = contextvars::spawn(async move {
                        let _ = TENANT.set("hooks-inherited".into());
                        let _ = LOGS_ON_DROP.set(LogsOnDrop("marker-drop-log-inherited"));
                        tokio::spawn(async move {
                            let _ = wait.await;
                        })
                    });
                    let inheritor = owner.await.unwrap();
                    go.send(()).unwrap();
                    inheritor.await.unwrap();
                    tokio::task::yield_now().await;
                }
            });
        }
    });
    let lines = text.lines("marker-drop-log-task");
    assert!(lines[0].contains(r#"tenant="plain-task""#), "{lines:?}");
    if cfg!(all(tokio_unstable, feature = "hooks")) {
        assert!(lines[1].contains(r#"tenant="hooks-task""#), "{lines:?}");
        let lines = text.lines("marker-drop-log-inherited");
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains(r#"tenant="hooks-inherited""#),
            "{lines:?}"
        );
    }
}
