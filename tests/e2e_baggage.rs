//! End to end: the `baggage` example's three services (A → B → C, each hop through a
//! hyper-util client behind `BaggageLayer`) on loopback ports, under load from 64 keep-alive
//! connections, each request with its own tenant, user id and an entry no variable claims.
//! Every answer must show, at every hop, that request's own typed values and its forwarded
//! entry; each bad input must get its 400, with nothing run downstream, on a connection
//! that stays usable.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tower::util::MapRequestLayer;

#[path = "support/http.rs"]
mod http_client;
use http_client::{Client, serve};

#[allow(dead_code, reason = "the example's `main` is not used here")]
#[path = "../examples/baggage.rs"]
mod baggage;

use baggage::{Seen, hop};

const CONNECTIONS: usize = 64;
const REQUESTS_PER_CONNECTION: usize = 80; // 5,120 in all
/// A guard against a hang, not a performance claim.
const GIVE_UP_AFTER: Duration = Duration::from_secs(5 * 60);

/// Serves C (counting in `reached` the requests that get there), B and A; returns A's
/// address.
async fn chain(reached: &'static AtomicUsize) -> std::net::SocketAddr {
    let c = serve(hop("C", None).layer(MapRequestLayer::new(move |request| {
        reached.fetch_add(1, Ordering::Relaxed);
        request
    })))
    .await;
    let b = serve(hop("B", Some(c))).await;
    serve(hop("A", Some(b))).await
}

fn expected(connection: usize, request: usize) -> (String, u64, String) {
    let tenant = format!("tenant-{connection}");
    let user = u64::try_from(connection * 1_000_000 + request).expect("small") + (1 << 40);
    let note = format!("c{connection}-r{request}");
    (tenant, user, note)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_hop_sees_its_own_request_typed_under_load() {
    static REACHED_C: AtomicUsize = AtomicUsize::new(0);
    let a = chain(&REACHED_C).await;
    let started = Instant::now();
    let connections = (0..CONNECTIONS).map(|c| {
        tokio::spawn(async move {
            let mut client = Client::connect(a).await;
            let mut mismatches = 0;
            for r in 0..REQUESTS_PER_CONNECTION {
                let (tenant, user, note) = expected(c, r);
                // Some values need escapes: a comma, a space, non-ASCII.
                let tenant = if r % 3 == 0 {
                    format!("{tenant}, inc. é")
                } else {
                    tenant
                };
                let mut header = String::new();
                contextvars::Context::new().run(|| {
                    let _ = baggage::TENANT.set(tenant.clone());
                    let _ = baggage::USER_ID.set(user);
                    contextvars::metadata::set_metadata_with(
                        "note",
                        note.clone(),
                        contextvars::metadata::MetadataFlags::BAGGAGE,
                    );
                    let mut headers = axum::http::HeaderMap::new();
                    contextvars::baggage::inject(&mut headers);
                    header = headers["baggage"].to_str().expect("text").to_owned();
                });
                let answer = client.get("/", &[("baggage", &header)]).await;
                assert_eq!(answer.status, 200, "{}", answer.body);
                let hops: Vec<Seen> = serde_json::from_str(&answer.body).expect("JSON");
                assert_eq!(
                    hops.iter().map(|s| s.hop.as_str()).collect::<Vec<_>>(),
                    ["A", "B", "C"],
                    "{}",
                    answer.body
                );
                for seen in &hops {
                    let ok = seen.tenant.as_deref() == Some(&tenant)
                        && seen.user_id == Some(user)
                        && seen.forwarded.get("note") == Some(&note)
                        && seen.forwarded.len() == 1;
                    if !ok {
                        mismatches += 1;
                        eprintln!("mismatch for {tenant}/{user}/{note}: {seen:?}");
                    }
                }
            }
            mismatches
        })
    });
    let mismatches = tokio::time::timeout(GIVE_UP_AFTER, async {
        let mut total = 0;
        for connection in connections.collect::<Vec<_>>() {
            total += connection.await.expect("a connection's assertions failed");
        }
        total
    })
    .await
    .expect("the load test did not finish in time");
    let elapsed = started.elapsed();
    let total = CONNECTIONS * REQUESTS_PER_CONNECTION;
    assert_eq!(
        mismatches, 0,
        "answers that showed another request's values"
    );
    assert_eq!(REACHED_C.load(Ordering::Relaxed), total);
    println!(
        "e2e_baggage: {total} requests (x3 hops) over {CONNECTIONS} connections in {:.2} s: \
         {:.0} requests/s, {mismatches} mismatches",
        elapsed.as_secs_f64(),
        f64::from(u32::try_from(total).expect("a few thousand")) / elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_is_a_400_naming_the_entry_on_a_connection_that_stays_usable() {
    static REACHED_C: AtomicUsize = AtomicUsize::new(0);
    let a = chain(&REACHED_C).await;
    let long = format!("tenant={}", "x".repeat(8_192));
    let many = vec!["k=v"; 181].join(",");
    let cases: [(&str, serde_json::Value); 10] = [
        ("tenant=acme,user_id=forty-two", "user_id".into()),
        ("tenant=acme,user_id=18446744073709551616", "user_id".into()),
        ("tenant=a,user_id=1,tenant=%zz", "tenant".into()),
        ("tenant=acme;;", "tenant".into()),
        ("tenant acme", "tenant acme".into()),
        ("tenant=%E2%28%A1", "tenant".into()),
        ("tenant=50%off", "tenant".into()),
        ("user_id", "user_id".into()),
        (&long, serde_json::Value::Null),
        (&many, serde_json::Value::Null),
    ];
    let mut client = Client::connect(a).await;
    for (header, entry) in &cases {
        let answer = client.get("/", &[("baggage", header)]).await;
        assert_eq!(answer.status, 400, "{header:?}: {}", answer.body);
        let json: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
        assert_eq!(&json["entry"], entry, "{header:?}: {json}");
        assert!(
            json["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("bad baggage header")),
            "{json}"
        );
    }
    // Not text: a byte past ASCII, sent raw.
    let answer = client.get("/", &[("baggage", "tenant=caf\u{e9}")]).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    // The same connection still serves, and nothing from the refused headers lingers.
    let answer = client.get("/", &[("baggage", "user_id=5")]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let hops: Vec<Seen> = serde_json::from_str(&answer.body).expect("JSON");
    for seen in &hops {
        assert_eq!(
            (seen.tenant.as_deref(), seen.user_id),
            (None, Some(5)),
            "{seen:?}"
        );
        assert!(seen.forwarded.is_empty(), "{seen:?}");
    }
    // Only the good request reached C: no refused one ran anywhere.
    assert_eq!(REACHED_C.load(Ordering::Relaxed), 1);
}
