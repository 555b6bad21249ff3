//! End to end over gRPC: a tonic server behind `ContextLayer::accept_baggage()` and a tonic
//! channel behind `BaggageLayer`, on loopback. Typed variables (a tenant `String`, a user id
//! `u64`) and an entry no variable claims cross the hop in the `baggage` header and arrive
//! typed in the handler; 32 tasks × 20 calls, each call with its own values, share one
//! multiplexed HTTP/2 connection with 0 mismatches; a bad header is an `INVALID_ARGUMENT`
//! status, the handler does not run, and the channel keeps serving.
//!
//! No `.proto` file and no `protoc`: the messages derive `prost::Message` by hand and the
//! service and client are written with tonic's low-level API (`tonic::server::Grpc`,
//! `tonic::client::Grpc`, `tonic_prost::ProstCodec`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http;
use contextvars::baggage::BaggageService;
use contextvars::metadata::{MetadataFlags, get_metadata, set_metadata_with};
use contextvars::tower::{BaggageLayer, ContextLayer};
use contextvars::{Context, FutureExt, context_var};
use tonic::transport::{Channel, Server};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;
use tower::{Layer, Service, service_fn};

#[context_var(baggage = "tenant")]
static TENANT: String;

#[context_var(baggage = "user_id")]
static USER_ID: u64;

const TASKS: usize = 32;
const CALLS_PER_TASK: usize = 20; // 640 in all
/// A guard against a hang, not a performance claim.
const GIVE_UP_AFTER: Duration = Duration::from_secs(2 * 60);

const SERVICE: &str = "contextvars.test.Echo";
const METHOD: &str = "/contextvars.test.Echo/Seen";

/// The request: which call this is, echoed back to pair answers with calls.
#[derive(Clone, PartialEq, prost::Message)]
struct Ask {
    #[prost(uint64, tag = "1")]
    call: u64,
}

/// The answer: what the handler's context holds.
#[derive(Clone, PartialEq, prost::Message)]
struct Seen {
    #[prost(uint64, tag = "1")]
    call: u64,
    #[prost(string, optional, tag = "2")]
    tenant: Option<String>,
    #[prost(uint64, optional, tag = "3")]
    user_id: Option<u64>,
    /// The unclaimed `note` entry, from the metadata map.
    #[prost(string, optional, tag = "4")]
    note: Option<String>,
}

/// The gRPC service, routed by hand: one unary method, `Seen`.
#[derive(Clone)]
struct Echo {
    /// Calls that reached the handler.
    handled: Arc<AtomicUsize>,
}

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = SERVICE;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() != METHOD {
            return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
        }
        let handled = Arc::clone(&self.handled);
        let seen = service_fn(move |ask: tonic::Request<Ask>| {
            let handled = Arc::clone(&handled);
            async move {
                // Let other calls run on this thread first: the values must still be this
                // call's own after an await.
                tokio::task::yield_now().await;
                handled.fetch_add(1, Ordering::Relaxed);
                Ok::<_, Status>(tonic::Response::new(Seen {
                    call: ask.into_inner().call,
                    tenant: TENANT.get(),
                    user_id: USER_ID.get(),
                    note: get_metadata("note"),
                }))
            }
        });
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Seen, Ask>::default());
            Ok(grpc.unary(seen, request).await)
        })
    }
}

/// Serves `Echo` on a loopback port behind `accept_baggage`, a bad header answered with
/// `INVALID_ARGUMENT`; counts accepted connections in `connections`.
async fn serve(handled: Arc<AtomicUsize>, connections: Arc<AtomicUsize>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let incoming = futures_util::stream::unfold(listener, move |listener| {
        let connections = Arc::clone(&connections);
        async move {
            let accepted = listener.accept().await.map(|(stream, _)| stream);
            connections.fetch_add(1, Ordering::Relaxed);
            Some((accepted, listener))
        }
    });
    let layer = ContextLayer::new()
        .accept_baggage()
        .reject_with(|err| Status::invalid_argument(err.to_string()).into_http());
    let router = Server::builder().layer(layer).add_service(Echo { handled });
    tokio::spawn(async move {
        router
            .serve_with_incoming(Box::pin(incoming))
            .await
            .expect("the server");
    });
    addr
}

type Client = tonic::client::Grpc<BaggageService<Channel>>;

async fn connect(addr: SocketAddr) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a URI")
        .connect()
        .await
        .expect("connect");
    tonic::client::Grpc::new(BaggageLayer::new().layer(channel))
}

/// One call of `Seen`, with `baggage` (if any) put on the request by hand.
async fn ask(client: &mut Client, call: u64, baggage: Option<&str>) -> Result<Seen, Status> {
    client
        .ready()
        .await
        .map_err(|err| Status::unavailable(err.to_string()))?;
    let mut request = tonic::Request::new(Ask { call });
    if let Some(baggage) = baggage {
        request
            .metadata_mut()
            .insert("baggage", baggage.parse().expect("ASCII"));
    }
    let path = http::uri::PathAndQuery::from_static(METHOD);
    let codec = ProstCodec::<Ask, Seen>::default();
    Ok(client.unary(request, path, codec).await?.into_inner())
}

fn expected(task: usize, call: usize) -> (String, u64, String) {
    // Some tenants need escapes: a comma, a space, non-ASCII.
    let tenant = if call % 3 == 0 {
        format!("tenant-{task}, inc. é")
    } else {
        format!("tenant-{task}")
    };
    let user = u64::try_from(task * 1_000_000 + call).expect("small") + (1 << 40);
    (tenant, user, format!("t{task}-c{call}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typed_values_cross_a_grpc_hop_under_concurrent_calls_on_one_channel() {
    let (handled, connections) = (Arc::default(), Arc::default());
    let addr = serve(Arc::clone(&handled), Arc::clone(&connections)).await;
    let client = connect(addr).await;
    let started = Instant::now();
    let tasks = (0..TASKS).map(|task| {
        let mut client = client.clone();
        tokio::spawn(
            async move {
                let mut mismatches = 0;
                for call in 0..CALLS_PER_TASK {
                    let (tenant, user, note) = expected(task, call);
                    let _ = TENANT.set(tenant.clone());
                    let _ = USER_ID.set(user);
                    set_metadata_with("note", note.clone(), MetadataFlags::BAGGAGE);
                    let id = u64::try_from(task * CALLS_PER_TASK + call).expect("small");
                    let seen = ask(&mut client, id, None).await.expect("a call");
                    let want = Seen {
                        call: id,
                        tenant: Some(tenant),
                        user_id: Some(user),
                        note: Some(note),
                    };
                    if seen != want {
                        mismatches += 1;
                        eprintln!("mismatch: sent {want:?}, the handler saw {seen:?}");
                    }
                }
                mismatches
            }
            .with_context(Context::new()),
        )
    });
    let mismatches = tokio::time::timeout(GIVE_UP_AFTER, async {
        let mut total = 0;
        for task in tasks.collect::<Vec<_>>() {
            total += task.await.expect("a task's assertions failed");
        }
        total
    })
    .await
    .expect("the calls did not finish in time");
    let elapsed = started.elapsed();
    let total = TASKS * CALLS_PER_TASK;
    assert_eq!(mismatches, 0, "answers that showed another call's values");
    assert_eq!(handled.load(Ordering::Relaxed), total);
    assert_eq!(
        connections.load(Ordering::Relaxed),
        1,
        "all calls multiplexed on the channel's one connection"
    );
    println!(
        "e2e_grpc_baggage: {total} gRPC calls from {TASKS} tasks on one HTTP/2 connection in \
         {:.2} s: {:.0} calls/s, {mismatches} mismatches",
        elapsed.as_secs_f64(),
        f64::from(u32::try_from(total).expect("hundreds")) / elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_header_is_invalid_argument_and_the_channel_keeps_serving() {
    let (handled, connections) = (Arc::<AtomicUsize>::default(), Arc::default());
    let addr = serve(Arc::clone(&handled), connections).await;
    let mut client = connect(addr).await;

    // Nothing set in this context: the header goes out as written.
    for (header, entry) in [
        ("tenant=acme,user_id=forty-two", "user_id"),
        ("user_id=18446744073709551616", "user_id"),
        ("tenant=a,tenant=%zz", "tenant"),
        ("tenant=50%off", "tenant"),
    ] {
        let status = ask(&mut client, 1, Some(header))
            .await
            .expect_err("a bad header is refused");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{header:?}: {status:?}"
        );
        assert!(
            status.message().starts_with("bad baggage header")
                && status.message().contains(&format!("`{entry}`")),
            "{header:?}: {status:?}"
        );
    }
    assert_eq!(handled.load(Ordering::Relaxed), 0, "no refused call ran");

    // The same channel still serves, and nothing from the refused headers lingers.
    let seen = ask(&mut client, 2, Some("user_id=5,note=ok"))
        .await
        .expect("a good call after the bad ones");
    assert_eq!(
        seen,
        Seen {
            call: 2,
            tenant: None,
            user_id: Some(5),
            note: Some("ok".into()),
        }
    );
    // And through `BaggageLayer`, from the context, as in the other test.
    let seen = async {
        let _ = USER_ID.set(7);
        ask(&mut client, 3, None).await
    }
    .with_context(Context::new())
    .await
    .expect("a call with baggage from the context");
    assert_eq!(
        (seen.tenant, seen.user_id, seen.note),
        (None, Some(7), None)
    );
    assert_eq!(handled.load(Ordering::Relaxed), 2);
}
