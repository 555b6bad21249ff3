//! Baggage is untrusted input. Served over loopback TCP to a real HTTP/1.1 client: what the
//! application sets itself (the layer's base context, its request hook) always wins over an
//! incoming entry for the same variable or metadata key, and is what the next hop receives;
//! `only_keys` limits what is read; `forward_unclaimed(false)` keeps the other entries from
//! being passed on.

use axum::Router;
use axum::extract::Request;
use axum::http;
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
        "next_hop": next_hop.get("baggage").map(|v| v.to_str().unwrap().to_owned()),
    })
    .to_string()
}

/// The request hook: sets the tenant from an authenticated source (here a header that an
/// authenticating proxy in front sets) and a private `role` entry.
fn authenticate(request: &mut Request) {
    let tenant = request
        .headers()
        .get("x-authenticated-tenant")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous")
        .to_string();
    let _ = TENANT.set(tenant);
    set_metadata("role", "viewer");
}

/// A layer whose base context holds a region and whose hook is [`authenticate`].
fn authenticated() -> ContextLayer<fn(&mut Request)> {
    let base = Context::new().wrap(|| {
        let _ = REGION.set("eu-west".to_string());
        Context::current()
    })();
    ContextLayer::with_base(base).on_request(authenticate as fn(&mut Request))
}

async fn ask(client: &mut Client, headers: &[(&str, &str)]) -> serde_json::Value {
    let answer = client.get("/", headers).await;
    assert_eq!(answer.status, 200, "{headers:?}: {}", answer.body);
    serde_json::from_str(&answer.body).expect("JSON")
}

#[tokio::test]
async fn the_applications_own_values_win_over_incoming_baggage() {
    let addr = serve(
        Router::new()
            .route("/", get(seen))
            .layer(authenticated().accept_baggage()),
    )
    .await;
    let mut client = Client::connect(addr).await;
    let json = ask(
        &mut client,
        &[
            ("x-authenticated-tenant", "acme"),
            (
                "baggage",
                "tenant=evil,role=admin,region=us-east,user_id=7,campaign=spring",
            ),
        ],
    )
    .await;
    // The hook's tenant, the base's region, the hook's private role entry.
    assert_eq!(json["tenant"], "acme", "{json}");
    assert_eq!(json["region"], "eu-west", "{json}");
    assert_eq!(json["role"], "viewer", "{json}");
    // What the application did not set is read from the header.
    assert_eq!(json["user_id"], 7, "{json}");
    assert_eq!(
        json["metadata"],
        serde_json::json!({"campaign": "spring", "role": "viewer"})
    );
    // The next hop gets the application's values; the private entry stays private.
    assert_eq!(
        json["next_hop"], "region=eu-west,tenant=acme,user_id=7,campaign=spring",
        "{json}"
    );

    // The same connection, without the authenticated header: still not the caller's tenant.
    let json = ask(&mut client, &[("baggage", "tenant=evil")]).await;
    assert_eq!(json["tenant"], "anonymous", "{json}");
}

#[tokio::test]
async fn only_keys_limits_what_is_read_from_a_header() {
    let layer = ContextLayer::new()
        .accept_baggage()
        .only_keys(["user_id", "campaign"]);
    let addr = serve(Router::new().route("/", get(seen)).layer(layer)).await;
    let mut client = Client::connect(addr).await;
    let json = ask(
        &mut client,
        &[(
            "baggage",
            "tenant=evil,user_id=7,campaign=spring,role=admin,region=%zz",
        )],
    )
    .await;
    assert_eq!(json["tenant"], serde_json::Value::Null, "{json}");
    assert_eq!(json["region"], serde_json::Value::Null, "{json}");
    assert_eq!(json["user_id"], 7, "{json}");
    assert_eq!(json["metadata"], serde_json::json!({"campaign": "spring"}));
    assert_eq!(json["next_hop"], "user_id=7,campaign=spring", "{json}");

    // A listed key is still checked as before.
    let answer = client.get("/", &[("baggage", "user_id=seven")]).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(
        answer.body.contains(r#""entry":"user_id""#),
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn forward_unclaimed_false_keeps_entries_readable_but_does_not_send_them() {
    let layer = authenticated().accept_baggage().forward_unclaimed(false);
    let addr = serve(Router::new().route("/", get(seen)).layer(layer)).await;
    let mut client = Client::connect(addr).await;
    let json = ask(
        &mut client,
        &[
            ("x-authenticated-tenant", "acme"),
            ("baggage", "user_id=7,campaign=spring;source=ad"),
        ],
    )
    .await;
    assert_eq!(json["metadata"]["campaign"], "spring", "{json}");
    assert_eq!(
        json["next_hop"], "region=eu-west,tenant=acme,user_id=7",
        "{json}"
    );
}
