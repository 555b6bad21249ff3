//! Production safety of requests served over real TCP, tested the way a service uses the
//! library, with and without the runtime hooks:
//! - a value whose `Drop` panics when its request ends takes down that request's connection
//!   only: other keep-alive connections go on, the process lives, the request's other values
//!   are still dropped inside its context, and nothing their drops set reaches anyone;
//! - many keep-alive connections on a multi-thread hooked runtime, with random yields,
//!   `join!`, `select!`, plain and `contextvars` spawns and client disconnects mid-request,
//!   never see one another's values.

#[path = "support/http.rs"]
mod http;
mod support;

use std::sync::Mutex;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::routing::get;
use contextvars::context_var;
use contextvars::tower::ContextLayer;
use support::Rng;

/// What the values' drops saw: `(what, tenant read in the drop)`.
static DROPS: Mutex<Vec<(String, Option<String>)>> = Mutex::new(Vec::new());

/// A value whose `Drop` panics.
struct Panics;

impl Drop for Panics {
    fn drop(&mut self) {
        panic!("a request value's Drop panics");
    }
}

/// A value whose `Drop` records the tenant it reads and tries to set `AFTER`.
struct Records(String);

impl Drop for Records {
    fn drop(&mut self) {
        DROPS.lock().unwrap().push((self.0.clone(), TENANT.get()));
        let _ = AFTER.try_set(self.0.clone());
    }
}

#[context_var]
static TENANT: String;

#[context_var]
static PANICS: Panics;

#[context_var]
static RECORDS_BEFORE: Records;

#[context_var]
static RECORDS_AFTER: Records;

/// Set by `Records`' drop: must never reach another request.
#[context_var]
static AFTER: String;

/// Set by every handler at its end: must never be read at the start of another.
#[context_var]
static LEFTOVER: String;

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn tenant_hook(request: &mut Request) {
    if let Some(tenant) = header(request.headers(), "x-tenant") {
        let _ = TENANT.set(tenant);
    }
}

/// Binds a panicking value between two recording ones, then answers.
async fn boom(headers: HeaderMap) -> String {
    let tenant = header(&headers, "x-tenant").unwrap();
    let _ = RECORDS_BEFORE.set(Records(format!("{tenant}/before")));
    let _ = PANICS.set(Panics);
    let _ = RECORDS_AFTER.set(Records(format!("{tenant}/after")));
    tokio::task::yield_now().await;
    "boom".to_string()
}

/// Reports what the request's context holds.
async fn report() -> String {
    format!(
        "{:?} {:?} {:?} {}",
        TENANT.get(),
        AFTER.get(),
        LEFTOVER.get(),
        PANICS.with(|p| p.is_some())
    )
}

/// Binds the same values, then panics itself: the values are dropped while the connection's
/// task unwinds.
async fn boom_then_panic(headers: HeaderMap) -> String {
    boom(headers).await;
    panic!("the handler panics");
}

fn boom_app(body_in_context: bool) -> Router {
    let router = Router::new()
        .route("/", get(report))
        .route("/boom", get(boom))
        .route("/boom-then-panic", get(boom_then_panic));
    let layer = ContextLayer::new().on_request(tenant_hook as fn(&mut Request));
    if body_in_context {
        router.layer(layer.body_in_context())
    } else {
        router.layer(layer)
    }
}

fn runtime(hooks: bool) -> tokio::runtime::Runtime {
    #[cfg(all(tokio_unstable, feature = "hooks"))]
    if hooks {
        return support::hooked_runtime(true, false);
    }
    assert!(
        !hooks,
        "the hooks need --cfg tokio_unstable and feature `hooks`"
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn hook_settings() -> Vec<bool> {
    if cfg!(all(tokio_unstable, feature = "hooks")) {
        vec![false, true]
    } else {
        vec![false]
    }
}

/// B39 at a request's end: a value whose `Drop` panics, bound by a handler behind the layer
/// (with and without `body_in_context`, with and without the hooks; the handler answering, or
/// panicking itself so that the values drop during unwinding), never aborts the process
/// and never surfaces in another connection; the request's other values are dropped inside
/// its context, and what their drops set reaches no later request.
#[test]
fn a_value_whose_drop_panics_at_a_requests_end_harms_no_other_connection() {
    for hooks in hook_settings() {
        for body_in_context in [false, true] {
            let case = format!("hooks {hooks}, body_in_context {body_in_context}");
            runtime(hooks).block_on(async {
                let addr = http::serve(boom_app(body_in_context)).await;
                let mut other = http::Client::connect(addr).await;
                let answer = other.get("/", &[("x-tenant", "other-1")]).await;
                assert_eq!(answer.body, r#"Some("other-1") None None false"#, "{case}");

                for path in ["/boom", "/boom-then-panic"] {
                    let tenant = format!("{path}-{hooks}-{body_in_context}");
                    let mut doomed = http::Client::connect(addr).await;
                    // Answered or not: the connection's task may die with the panic.
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        doomed.try_get(path, &[("x-tenant", &tenant)]),
                    )
                    .await;

                    let mut seen = Vec::new();
                    for _ in 0..200 {
                        seen = DROPS
                            .lock()
                            .unwrap()
                            .iter()
                            .filter(|(what, _)| what.starts_with(&tenant))
                            .cloned()
                            .collect();
                        if seen.len() == 2 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    seen.sort();
                    assert_eq!(
                        seen,
                        [
                            (format!("{tenant}/after"), Some(tenant.clone())),
                            (format!("{tenant}/before"), Some(tenant.clone())),
                        ],
                        "{case}: both other values dropped, inside the request's context"
                    );
                }

                // The other keep-alive connection, and a new one, are served as before.
                let answer = other.get("/", &[("x-tenant", "other-2")]).await;
                assert_eq!(answer.body, r#"Some("other-2") None None false"#, "{case}");
                let mut fresh = http::Client::connect(addr).await;
                let answer = fresh.get("/", &[]).await;
                assert_eq!(answer.body, "None None None false", "{case}");
            });
        }
    }
}

/// A value whose `Drop` records the tenant, bound by a request whose handler never answers.
async fn hang(headers: HeaderMap) -> String {
    let tenant = header(&headers, "x-tenant").unwrap();
    let _ = RECORDS_BEFORE.set(Records(format!("{tenant}/hung")));
    std::future::pending::<()>().await;
    unreachable!()
}

/// The handler of the stress test: checks, at every step, that it sees its own request's
/// tenant and nothing another request left behind.
async fn stress(headers: HeaderMap) -> String {
    let tenant = header(&headers, "x-tenant").unwrap();
    let seed: u64 = header(&headers, "x-seed").unwrap().parse().unwrap();
    let mut rng = Rng::new(seed);
    let mut problems = Vec::new();
    let check = |problems: &mut Vec<String>, step: &str, seen: Option<String>| {
        if seen.as_deref() != Some(tenant.as_str()) {
            problems.push(format!("{step}: {seen:?}"));
        }
    };
    if let Some(left) = LEFTOVER.get() {
        problems.push(format!("leftover {left}"));
    }
    if let Some(after) = AFTER.get() {
        problems.push(format!("after {after}"));
    }
    check(&mut problems, "start", TENANT.get());
    for _ in 0..rng.below(3) {
        tokio::task::yield_now().await;
    }
    let yields = rng.below(4);
    // A plain spawn: under the hooks it reads its spawner's values; without them, nothing.
    let plain = tokio::spawn(async move {
        for _ in 0..yields {
            tokio::task::yield_now().await;
        }
        TENANT.get()
    });
    // A contextvars spawn: its own copy, whose sets stay in it.
    let child = contextvars::spawn(async move {
        let before = TENANT.get();
        let _ = TENANT.set("child".to_string());
        tokio::task::yield_now().await;
        (before, TENANT.get())
    });
    let (joined, plain, child) = tokio::join!(
        async {
            tokio::task::yield_now().await;
            TENANT.get()
        },
        plain,
        child
    );
    check(&mut problems, "join", joined);
    let plain = plain.unwrap();
    if cfg!(all(tokio_unstable, feature = "hooks")) && HOOKED.get() {
        check(&mut problems, "plain spawn", plain);
    } else if plain.is_some() {
        problems.push(format!("plain spawn without hooks: {plain:?}"));
    }
    let (child_before, child_after) = child.unwrap();
    check(&mut problems, "child", child_before);
    if child_after.as_deref() != Some("child") {
        problems.push(format!("child after: {child_after:?}"));
    }
    let raced = tokio::select! {
        read = async {
            for _ in 0..yields {
                tokio::task::yield_now().await;
            }
            TENANT.get()
        } => read,
        () = tokio::time::sleep(Duration::from_secs(3)) => Some("timeout".to_string()),
    };
    check(&mut problems, "select", raced);
    check(&mut problems, "end", TENANT.get());
    let _ = LEFTOVER.set(tenant.clone());
    if problems.is_empty() {
        format!("ok {tenant}")
    } else {
        format!("{tenant}: {}", problems.join("; "))
    }
}

/// Whether the current stress run is on a hooked runtime (plain spawns then inherit).
#[context_var]
static HOOKED: bool = false;

fn stress_app(hooked: bool) -> Router {
    let base = contextvars::Context::new().with_value(&HOOKED, hooked);
    Router::new()
        .route("/", get(stress))
        .route("/hang", get(hang))
        .layer(ContextLayer::with_base(base).on_request(tenant_hook as fn(&mut Request)))
}

/// B40 under load: 8 keep-alive connections of 25 requests each on a multi-thread runtime,
/// with and without the hooks; handlers yield at random, `join!` and `select!` branches,
/// spawn plain and `contextvars` tasks; some clients give up on a request that never answers
/// and drop their connection. Every step of every request reads its own tenant and nothing
/// any other request set, and every hung request's value is dropped inside its own context.
#[test]
fn keep_alive_connections_under_load_never_see_each_others_values() {
    for hooks in hook_settings() {
        runtime(hooks).block_on(async move {
            let addr = http::serve(stress_app(hooks)).await;
            let connections: Vec<_> = (0..8u64)
                .map(|c| {
                    tokio::spawn(async move {
                        let mut rng = Rng::new(c + 1);
                        let mut client = http::Client::connect(addr).await;
                        for r in 0..25u64 {
                            let tenant = format!("h{hooks}-c{c}-r{r}");
                            if rng.below(10) == 0 {
                                // Give up on a request that never answers: the connection
                                // goes, with the request future the server still holds.
                                let hung = tokio::time::timeout(
                                    Duration::from_millis(20),
                                    client.try_get("/hang", &[("x-tenant", &tenant)]),
                                )
                                .await;
                                assert!(hung.is_err(), "/hang never answers");
                                client = http::Client::connect(addr).await;
                                continue;
                            }
                            let seed = rng.next().to_string();
                            let answer = client
                                .get("/", &[("x-tenant", &tenant), ("x-seed", &seed)])
                                .await;
                            assert_eq!(answer.body, format!("ok {tenant}"));
                        }
                    })
                })
                .collect();
            for connection in connections {
                connection.await.unwrap();
            }
            // Hung requests whose connections the server saw close: dropped in their context.
            tokio::time::sleep(Duration::from_millis(100)).await;
            for (what, seen) in DROPS.lock().unwrap().iter() {
                if let Some(tenant) = what.strip_suffix("/hung") {
                    assert_eq!(seen.as_deref(), Some(tenant), "{what}");
                }
            }
        });
    }
}

/// HTTP/1.1 pipelining, a client sending many requests in one write before reading any
/// answer: the connection's task serves them one after the other, and each still runs in a
/// context of its own (its tenant, nothing the one before it set), with and without the hooks.
#[test]
fn pipelined_requests_on_one_connection_each_get_their_own_context() {
    use std::fmt::Write;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    for hooks in hook_settings() {
        runtime(hooks).block_on(async move {
            let addr = http::serve(stress_app(hooks)).await;
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let count = 20;
            let mut batch = String::new();
            for i in 0..count {
                let close = if i == count - 1 { "connection: close\r\n" } else { "" };
                write!(
                    batch,
                    "GET / HTTP/1.1\r\nhost: x\r\nx-tenant: p{hooks}-{i}\r\nx-seed: {i}\r\n{close}\r\n"
                )
                .unwrap();
            }
            stream.write_all(batch.as_bytes()).await.unwrap();
            let mut text = String::new();
            tokio::time::timeout(Duration::from_secs(4), stream.read_to_string(&mut text))
                .await
                .expect("all answers within the time")
                .unwrap();
            let bodies: Vec<&str> = text
                .split("HTTP/1.1 ")
                .skip(1)
                .map(|answer| answer.split("\r\n\r\n").nth(1).unwrap_or_default())
                .collect();
            let expected: Vec<String> = (0..count).map(|i| format!("ok p{hooks}-{i}")).collect();
            assert_eq!(bodies, expected);
        });
    }
}
