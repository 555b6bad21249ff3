//! HTTP/2 over a real TCP connection, for the tests that serve an axum app on a loopback port:
//! the server is `axum::serve` (which speaks HTTP/2 with prior knowledge, h2c, besides
//! HTTP/1), the client one hyper HTTP/2 connection whose handle is cloned, so that every
//! request sent through it is a stream multiplexed on that one connection.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Bytes;
use axum::http::{Request, Version};
use axum::serve::ListenerExt;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

/// Holds the tests of one binary to one at a time, for as long as it lives: they share the
/// app's records and counters. Taken first by every test of these files; a test that failed
/// holding it does not stop the others.
pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One response: status, the protocol it came in, and body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) version: Version,
    pub(crate) body: String,
}

/// One HTTP/2 connection; clones send on the same connection.
#[derive(Clone)]
pub(crate) struct Client {
    send: SendRequest<Empty<Bytes>>,
}

impl Client {
    /// Connects and runs the HTTP/2 handshake (prior knowledge: no upgrade from HTTP/1).
    pub(crate) async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (send, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("HTTP/2 handshake");
        tokio::spawn(connection);
        Client { send }
    }

    /// Sends `GET path` with `headers` on the connection, as a new stream, and reads the
    /// whole answer.
    pub(crate) async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = Request::get(format!("http://127.0.0.1{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Empty::new()).expect("a request");
        let mut send = self.send.clone();
        let response = send
            .send_request(request)
            .await
            .unwrap_or_else(|err| panic!("`GET {path}` on the HTTP/2 connection: {err}"));
        let status = response.status().as_u16();
        let version = response.version();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("the body")
            .to_bytes();
        Answer {
            status,
            version,
            body: String::from_utf8(body.to_vec()).expect("utf-8 body"),
        }
    }

    /// Whether the connection still takes requests.
    pub(crate) fn is_open(&self) -> bool {
        !self.send.is_closed()
    }
}

/// Serves `app` with `axum::serve` on a loopback port until the test's runtime shuts down;
/// the counter tells how many TCP connections it accepted.
pub(crate) async fn serve(app: axum::Router) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let listener = listener.tap_io(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, accepted)
}

/// The app both HTTP/2 suites serve, and what its handlers read and set.
pub(crate) mod app {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use axum::Router;
    use axum::extract::Request;
    use axum::http::{HeaderMap, Version};
    use axum::routing::get;
    use contextvars::context_var;
    use contextvars::tower::ContextLayer;

    /// The request's id, set by the layer's `on_request` hook from the `x-id` header.
    #[context_var]
    pub(crate) static ID: String;

    /// Set by a handler midway: must never be read by another request.
    #[context_var]
    pub(crate) static LEFTOVER: String;

    /// Bound by `/hold`, a request the client cancels.
    #[context_var]
    pub(crate) static HELD: Recorder;

    /// What the `Recorder`s' drops saw: `(own id, ID read in the drop)`.
    pub(crate) static DROPS: Mutex<Vec<(String, Option<String>)>> = Mutex::new(Vec::new());

    /// How many `/hold` handlers have bound their value.
    pub(crate) static HOLDING: AtomicUsize = AtomicUsize::new(0);

    /// `/echo` handlers running now, and the most that ran at once since the last
    /// [`start_counting`]: the streams interleave only if many do.
    pub(crate) static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
    pub(crate) static MAX_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

    /// Starts counting the `/echo` handlers in flight at once afresh, for one run.
    pub(crate) fn start_counting() {
        MAX_IN_FLIGHT.store(IN_FLIGHT.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// A value that records, when dropped, the request id it reads then.
    pub(crate) struct Recorder(pub(crate) String);

    impl Drop for Recorder {
        fn drop(&mut self) {
            DROPS.lock().unwrap().push((self.0.clone(), ID.get()));
        }
    }

    fn header(headers: &HeaderMap, name: &str) -> String {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    /// The two delays (ms) the client chose, from `x-delay: a,b`.
    fn delays(headers: &HeaderMap) -> (Duration, Duration) {
        let delay = header(headers, "x-delay");
        let (a, b) = delay.split_once(',').unwrap_or(("0", "0"));
        (
            Duration::from_millis(a.parse().unwrap_or(0)),
            Duration::from_millis(b.parse().unwrap_or(0)),
        )
    }

    fn outcome<T>(result: Result<T, contextvars::SetError>) -> String {
        match result {
            Ok(_) => "ok".to_string(),
            Err(err @ contextvars::SetError::Inherited { .. }) => {
                let first = err.to_string();
                let names_layer = first.contains("ContextLayer");
                format!("inherited(names layer: {names_layer})")
            }
            Err(err) => format!("other error: {err}"),
        }
    }

    /// Reads, sleeps, sets `LEFTOVER` to the request's id, sleeps, reads again; answers
    /// `version start=(ID,LEFTOVER) set=outcome end=(ID,LEFTOVER)`.
    async fn echo(version: Version, headers: HeaderMap) -> String {
        let id = header(&headers, "x-id");
        let (first, second) = delays(&headers);
        let start = (ID.get(), LEFTOVER.get());
        let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
        MAX_IN_FLIGHT.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(first).await;
        let set = outcome(LEFTOVER.try_set(id));
        tokio::time::sleep(second).await;
        tokio::task::yield_now().await;
        let end = (ID.get(), LEFTOVER.get());
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        format!("{version:?} start={start:?} set={set} end={end:?}")
    }

    /// Binds a `Recorder` with the request's id, then waits for the client to cancel.
    async fn hold(headers: HeaderMap) -> String {
        let id = header(&headers, "x-id");
        let set = outcome(HELD.try_set(Recorder(id)));
        HOLDING.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(60)).await;
        format!("held {set}")
    }

    /// Sets the only ways a handler without the layer can under the hooks: `ID.scope`, and a
    /// `contextvars::spawn` task; answers what each read back after awaits, and what the
    /// handler reads once they are over: `scope=.. spawn=.. after=(ID,LEFTOVER)`.
    async fn scoped(headers: HeaderMap) -> String {
        let id = header(&headers, "x-id");
        let (first, second) = delays(&headers);
        let scope = ID
            .scope(id.clone(), async move {
                tokio::time::sleep(first).await;
                ID.get()
            })
            .await;
        let spawned = contextvars::spawn(async move {
            let _ = LEFTOVER.set(id);
            tokio::time::sleep(second).await;
            LEFTOVER.get()
        })
        .await
        .expect("the spawned task");
        let after = (ID.get(), LEFTOVER.get());
        format!("scope={scope:?} spawn={spawned:?} after={after:?}")
    }

    fn id_hook(request: &mut Request) {
        let id = header(request.headers(), "x-id");
        if !id.is_empty() {
            let _ = ID.set(id);
        }
    }

    /// The routes, with or without `ContextLayer::new().on_request(..)` (setting `ID`).
    pub(crate) fn router(layer: bool) -> Router {
        let router = Router::new()
            .route("/echo", get(echo))
            .route("/hold", get(hold))
            .route("/scoped", get(scoped));
        if layer {
            router.layer(ContextLayer::new().on_request(id_hook as fn(&mut Request)))
        } else {
            router
        }
    }

    /// What `/echo` answers for request `id` when each request's values are its own.
    pub(crate) fn echoed_alone(id: &str) -> String {
        format!("HTTP/2.0 start=(Some({id:?}), None) set=ok end=(Some({id:?}), Some({id:?}))")
    }
}

/// Sends `/hold` requests for ids `{prefix}-held-0..32` on `client`, then starts `others`
/// (requests that must be answered meanwhile); once every held handler has bound its value,
/// resets the held streams (drops their response futures), checks that each held value was
/// dropped reading its own request's id, and returns what `others` gave.
pub(crate) async fn cancel_held_while<T: Send + 'static>(
    client: &Client,
    prefix: &str,
    others: impl FnOnce() -> tokio::task::JoinHandle<T>,
) -> T {
    use std::time::{Duration, Instant};

    use app::{DROPS, HOLDING};

    const HELD: usize = 32;
    let holding_before = HOLDING.load(Ordering::SeqCst);
    let mut held = Vec::new();
    for n in 0..HELD {
        let client = client.clone();
        let id = format!("{prefix}-held-{n}");
        held.push(tokio::spawn(async move {
            client.get("/hold", &[("x-id", id.as_str())]).await;
            panic!("{id} was answered");
        }));
    }
    let others = others();
    // Every held handler has bound its value (a guard against a hang, not a time limit).
    let give_up = Instant::now() + Duration::from_secs(30);
    while HOLDING.load(Ordering::SeqCst) < holding_before + HELD {
        assert!(Instant::now() < give_up, "the held requests never ran");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Dropping the response futures resets their streams.
    for task in &held {
        task.abort();
    }
    for task in held {
        assert!(task.await.unwrap_err().is_cancelled());
    }
    let mine = format!("{prefix}-held-");
    let mut dropped = Vec::new();
    while dropped.len() < HELD {
        assert!(Instant::now() < give_up, "dropped only {dropped:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
        dropped = DROPS
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| id.starts_with(&mine))
            .cloned()
            .collect();
    }
    for (id, read) in &dropped {
        assert_eq!(read.as_deref(), Some(id.as_str()), "{dropped:?}");
    }
    assert_eq!(
        dropped.len(),
        HELD,
        "one drop for each value held: {dropped:?}"
    );
    others.await.expect("the other requests")
}
