//! A hostile client against `accept_baggage`, over loopback TCP on keep-alive connections:
//! whatever form the header takes (repeated keys, escapes, properties, whitespace, several
//! lines, more entries than the usual header), what the application set itself (the layer's
//! base, a synchronous or an asynchronous request hook) wins and is what the next hop
//! receives; a header over the limits when its lines are joined, or malformed in any way, is
//! answered with a 400 naming the problem, sets nothing, and leaves the connection open.

use axum::Router;
use axum::extract::Request;
use axum::http;
use axum::response::Response;
use axum::routing::get;
use contextvars::baggage::inject;
use contextvars::metadata::{get_all_metadata, get_metadata, set_metadata};
use contextvars::tower::ContextLayer;
use contextvars::{Context, context_var};

#[path = "support/http.rs"]
mod http_client;
use http_client::{Client, serve};

#[context_var(baggage = "tenant")]
static TENANT: String;

#[context_var(baggage = "region")]
static REGION: String;

#[context_var(baggage = "user_id")]
static USER_ID: u64;

/// What the request's context holds, and the header a call to the next hop would carry.
async fn seen() -> String {
    let mut next_hop = http::HeaderMap::new();
    inject(&mut next_hop);
    serde_json::json!({
        "tenant": TENANT.get(),
        "region": REGION.get(),
        "user_id": USER_ID.get(),
        "role": get_metadata("role"),
        "metadata": get_all_metadata(),
        "next_hop": next_hop
            .get_all("baggage")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join("|"),
    })
    .to_string()
}

fn base() -> Context {
    Context::new().with_value(&REGION, "eu-west".to_string())
}

/// The tenant from the authenticating proxy's header, and a private role.
fn authenticate(headers: &http::HeaderMap) {
    let tenant = headers
        .get("x-authenticated-tenant")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous")
        .to_string();
    let _ = TENANT.set(tenant);
    set_metadata("role", "viewer");
}

fn sync_app() -> Router {
    let layer = ContextLayer::with_base(base())
        .on_request(|request: &mut Request| authenticate(request.headers()))
        .accept_baggage();
    Router::new().route("/", get(seen)).layer(layer)
}

fn async_app() -> Router {
    let layer = ContextLayer::with_base(base())
        .on_request_async(|request: Request| async move {
            tokio::task::yield_now().await;
            authenticate(request.headers());
            tokio::task::yield_now().await;
            Ok::<_, Response>(request)
        })
        .accept_baggage();
    Router::new().route("/", get(seen)).layer(layer)
}

async fn ask(client: &mut Client, headers: &[(&str, &str)]) -> serde_json::Value {
    let answer = client.get("/", headers).await;
    assert_eq!(answer.status, 200, "{headers:?}: {}", answer.body);
    serde_json::from_str(&answer.body).expect("JSON")
}

/// Baggage headers that try to override the application's tenant, role and region, each as
/// the lines of one request.
fn overriding_headers() -> Vec<Vec<String>> {
    let many: Vec<String> = (1..=12).map(|i| format!("k{i}=v{i}")).collect();
    vec![
        vec!["tenant=evil,role=admin,region=us-east".into()],
        // A key given twice: the last entry wins among entries, never over the application.
        vec!["tenant=evil,tenant=evil2,role=admin,role=admin2".into()],
        // Escapes and properties: the header is read the long way.
        vec!["tenant=ev%69l;p=1,role=adm%69n;x,region=us%2Deast;q".into()],
        // Whitespace around keys and values.
        vec!["  tenant = evil ,\trole\t=\tadmin , region =us-east ".into()],
        // One entry a line.
        vec![
            "tenant=evil".into(),
            "role=admin".into(),
            "region=us-east".into(),
        ],
        // More entries than the usual header.
        vec![format!(
            "{},tenant=evil,role=admin,region=us-east",
            many.join(",")
        )],
        // The override last, after a first line of innocent entries.
        vec!["k1=v1".into(), "tenant=evil;p,role=admin".into()],
    ]
}

/// B41: the application's own values (the base's region, the tenant and private role a
/// synchronous or asynchronous request hook sets) win over every form of incoming baggage,
/// request after request on one keep-alive connection, and are what the next hop receives.
#[tokio::test]
async fn the_applications_values_win_over_every_form_of_the_header() {
    for (kind, app) in [("sync", sync_app()), ("async", async_app())] {
        let addr = serve(app).await;
        let mut client = Client::connect(addr).await;
        for lines in overriding_headers() {
            let mut headers = vec![("x-authenticated-tenant", "acme")];
            headers.extend(lines.iter().map(|line| ("baggage", line.as_str())));
            let json = ask(&mut client, &headers).await;
            let case = format!("{kind} hook, {lines:?}: {json}");
            assert_eq!(json["tenant"], "acme", "{case}");
            assert_eq!(json["region"], "eu-west", "{case}");
            assert_eq!(json["role"], "viewer", "{case}");
            assert_eq!(json["metadata"]["role"], "viewer", "{case}");
            let next_hop = json["next_hop"].as_str().unwrap();
            for part in ["tenant=acme", "region=eu-west"] {
                assert!(next_hop.contains(part), "{case}");
            }
            for word in ["evil", "admin", "us-east", "us%2Deast", "role"] {
                assert!(!next_hop.contains(word), "{word} forwarded: {case}");
            }
        }
    }
}

/// A header made of `count` entries `k<i>=<value>`, split over `lines` lines.
fn entries(count: usize, value: &str, lines: usize) -> Vec<String> {
    let all: Vec<String> = (0..count).map(|i| format!("k{i}={value}")).collect();
    all.chunks(count.div_ceil(lines))
        .map(|chunk| chunk.join(","))
        .collect()
}

/// B36, B41: headers a hostile client sends. Each is refused with a 400 whose JSON body names
/// the problem, before the handler runs; a `user_id` entry next to the bad part is not set;
/// the next request on the same connection starts clean.
#[tokio::test]
async fn bad_headers_are_refused_whole_and_the_connection_serves_on() {
    let long = "v".repeat(4_100);
    let mut bad: Vec<(Vec<String>, &str)> = vec![
        // Over the byte limit only once the lines are joined.
        (entries(2, &long, 2), "bytes"),
        (
            vec![
                format!("user_id=5,a={long}"),
                format!("b={long}"),
                format!("c={}", &long[..300]),
            ],
            "bytes",
        ),
        // Over the entry limit only once the lines are joined.
        (entries(200, "v", 2), "entries"),
        (entries(181, "v", 3), "entries"),
        // One huge line.
        (vec![format!("user_id=5,k={}", "v".repeat(20_000))], "bytes"),
        (vec![vec!["k=v"; 1_000].join(",")], "entries"),
    ];
    for malformed in [
        "user_id=5,tenant",
        "user_id=5,=x",
        "user_id=5,tenant=%ZZ",
        "user_id=5,tenant=%C3%28",
        "user_id=5,tenant=a;;",
        "user_id=5,tenant=a;p=%ZZ",
        "user_id=5,tenant=a b",
        "user_id=5,ten ant=a",
        "user_id=5,tenant=\"quoted\"",
        "user_id=5,user_id=seven",
        "user_id=99999999999999999999999",
        "user_id=-1",
    ] {
        bad.push((vec![malformed.to_string()], ""));
    }
    bad.push((vec!["user_id=5".into(), "tenant=%ZZ".into()], ""));
    bad.push((vec!["tenant=%ZZ".into(), "user_id=5".into()], ""));

    let addr = serve(sync_app()).await;
    let mut client = Client::connect(addr).await;
    for (lines, problem) in bad {
        let mut headers = vec![("x-authenticated-tenant", "acme")];
        headers.extend(lines.iter().map(|line| ("baggage", line.as_str())));
        let shown: Vec<&str> = lines.iter().map(|l| &l[..l.len().min(60)]).collect();
        let answer = client.get("/", &headers).await;
        let short = &answer.body[..answer.body.len().min(300)];
        assert_eq!(answer.status, 400, "{shown:?}: {short}");
        let body: serde_json::Value = serde_json::from_str(&answer.body)
            .unwrap_or_else(|_| panic!("{shown:?}: JSON body {}", answer.body));
        assert!(
            body.to_string().contains(problem),
            "{shown:?}: {problem} in {body}"
        );
        let json = ask(&mut client, &[("baggage", "k=v")]).await;
        assert_eq!(
            json["user_id"],
            serde_json::Value::Null,
            "{shown:?}: {json}"
        );
        assert_eq!(json["tenant"], "anonymous", "{shown:?}: {json}");
        assert_eq!(
            json["metadata"],
            serde_json::json!({"k": "v", "role": "viewer"}),
            "{shown:?}: {json}"
        );
    }
}

/// The documented trust boundary: a request hook runs before the header is read, so it can
/// drop the header of an untrusted caller; nothing of it is then read or forwarded.
#[tokio::test]
async fn a_request_hook_can_strip_the_header_before_it_is_read() {
    let layer = ContextLayer::new()
        .on_request(|request: &mut Request| {
            if !request.headers().contains_key("x-internal") {
                request.headers_mut().remove("baggage");
            }
        })
        .accept_baggage();
    let addr = serve(Router::new().route("/", get(seen)).layer(layer)).await;
    let mut client = Client::connect(addr).await;
    for _ in 0..3 {
        let json = ask(
            &mut client,
            &[("baggage", "tenant=evil,user_id=1"), ("baggage", "k=v")],
        )
        .await;
        assert_eq!(json["tenant"], serde_json::Value::Null, "{json}");
        assert_eq!(json["user_id"], serde_json::Value::Null, "{json}");
        assert_eq!(json["next_hop"], "", "{json}");
        let json = ask(
            &mut client,
            &[("x-internal", "1"), ("baggage", "tenant=ok,user_id=1")],
        )
        .await;
        assert_eq!(json["tenant"], "ok", "{json}");
        assert_eq!(json["user_id"], 1, "{json}");
    }
}

/// B41 and B42 together: with two layers nested, what the application sets in either layer's
/// hook wins over the baggage that the other layer reads, whichever of the two reads it.
#[tokio::test]
async fn nested_layers_keep_the_applications_values_over_baggage_read_by_either() {
    let hook = |request: &mut Request| authenticate(request.headers());
    let inner_reads = Router::new()
        .route("/", get(seen))
        .layer(ContextLayer::new().accept_baggage())
        .layer(ContextLayer::with_base(base()).on_request(hook));
    let outer_reads = Router::new()
        .route("/", get(seen))
        .layer(ContextLayer::new().on_request(hook))
        .layer(ContextLayer::with_base(base()).accept_baggage());
    for (kind, app) in [("inner reads", inner_reads), ("outer reads", outer_reads)] {
        let addr = serve(app).await;
        let mut client = Client::connect(addr).await;
        for _ in 0..2 {
            let json = ask(
                &mut client,
                &[
                    ("x-authenticated-tenant", "acme"),
                    ("baggage", "tenant=evil,role=admin,region=us-east,user_id=7"),
                ],
            )
            .await;
            let case = format!("{kind}: {json}");
            assert_eq!(json["tenant"], "acme", "{case}");
            assert_eq!(json["role"], "viewer", "{case}");
            assert_eq!(json["region"], "eu-west", "{case}");
            assert_eq!(json["user_id"], 7, "{case}");
            let next_hop = json["next_hop"].as_str().unwrap();
            assert!(next_hop.contains("tenant=acme"), "{case}");
            for word in ["evil", "admin", "us-east"] {
                assert!(!next_hop.contains(word), "{word} forwarded: {case}");
            }
        }
    }
}

/// The errors `ignore_bad_entries` reported.
static REPORTED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// B36 with `ignore_bad_entries`: a bad entry is skipped and the others are read; a header bad
/// as a whole (over the limits once its lines are joined, or a line that is not text) is left
/// out whole, valid entries included, with one report; the application's values still win.
#[tokio::test]
async fn ignore_bad_entries_skips_an_entry_or_a_whole_header_and_reports_each() {
    let layer = ContextLayer::with_base(base())
        .on_request(|request: &mut Request| authenticate(request.headers()))
        .accept_baggage()
        .ignore_bad_entries(|err| REPORTED.lock().unwrap().push(err.to_string()));
    let addr = serve(Router::new().route("/", get(seen)).layer(layer)).await;
    let mut client = Client::connect(addr).await;
    let reported = || std::mem::take(&mut *REPORTED.lock().unwrap());

    let json = ask(
        &mut client,
        &[(
            "baggage",
            "user_id=5,tenant=evil,k=%ZZ,region=us-east,ok=yes",
        )],
    )
    .await;
    assert_eq!(json["user_id"], 5, "{json}");
    assert_eq!(json["tenant"], "anonymous", "{json}");
    assert_eq!(json["region"], "eu-west", "{json}");
    assert_eq!(json["metadata"]["ok"], "yes", "{json}");
    assert_eq!(json["metadata"].get("k"), None, "{json}");
    assert_eq!(reported().len(), 1);

    // A bad entry whose key comes again, before or after: skipped and reported, and the good
    // entry with that key read.
    for header in ["k=%ZZ,k=good,user_id=6", "k=good,k=%ZZ,user_id=6"] {
        let json = ask(&mut client, &[("baggage", header)]).await;
        assert_eq!(json["user_id"], 6, "{header}: {json}");
        assert_eq!(json["metadata"]["k"], "good", "{header}: {json}");
        assert_eq!(reported().len(), 1, "{header}");
    }

    let long = "v".repeat(4_100);
    let json = ask(
        &mut client,
        &[
            ("baggage", &format!("user_id=5,a={long}")),
            ("baggage", &format!("b={long}")),
        ],
    )
    .await;
    assert_eq!(json["user_id"], serde_json::Value::Null, "whole header out");
    assert_eq!(json["metadata"], serde_json::json!({"role": "viewer"}));
    let errors = reported();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("bytes"), "{errors:?}");

    let many: Vec<String> = (0..200).map(|i| format!("k{i}=v")).collect();
    let json = ask(
        &mut client,
        &[
            ("baggage", &format!("user_id=5,{}", many[..100].join(","))),
            ("baggage", &many[100..].join(",")),
        ],
    )
    .await;
    assert_eq!(json["user_id"], serde_json::Value::Null, "whole header out");
    assert_eq!(json["metadata"], serde_json::json!({"role": "viewer"}));
    assert_eq!(reported().len(), 1);
}
