//! B40 over HTTP/2 with tonic, under the runtime hooks: many calls multiplexed on one
//! channel, served with and without `ContextLayer`. With the layer, each call reads and
//! writes its own values; without it, a call reads only what flowed from where the server was
//! started (never another call's values) and its writes fail loudly, naming the layer.

#![cfg(all(tokio_unstable, feature = "hooks"))]

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use axum::http;
use contextvars::tower::ContextLayer;
use contextvars::{Context, context_var};
use tonic::Status;
use tonic::transport::{Channel, Server};
use tonic_prost::ProstCodec;
use tower::{Service, service_fn};

#[context_var]
static TENANT: String;

/// Set by every call at its end: must never be read by another.
#[context_var]
static LEFTOVER: String;

const SERVICE: &str = "contextvars.test.Who";
const METHOD: &str = "/contextvars.test.Who/Ask";

#[derive(Clone, PartialEq, prost::Message)]
struct Ask {
    #[prost(string, tag = "1")]
    tenant: String,
}

/// What the call read at its start and after awaits, and what its writes gave.
#[derive(Clone, PartialEq, prost::Message)]
struct Seen {
    #[prost(string, optional, tag = "1")]
    tenant: Option<String>,
    #[prost(string, optional, tag = "2")]
    leftover: Option<String>,
    #[prost(string, optional, tag = "3")]
    tenant_after: Option<String>,
    /// `ok`, or the error of the write.
    #[prost(string, tag = "4")]
    write: String,
}

#[derive(Clone)]
struct Who;

impl tonic::server::NamedService for Who {
    const NAME: &'static str = SERVICE;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<http::Request<tonic::body::Body>> for Who {
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
        let handler = service_fn(|ask: tonic::Request<Ask>| async move {
            let tenant = TENANT.get();
            let leftover = LEFTOVER.get();
            tokio::task::yield_now().await;
            let write = match LEFTOVER.try_set(ask.into_inner().tenant) {
                Ok(_) => "ok".to_string(),
                Err(err) => err.to_string(),
            };
            tokio::task::yield_now().await;
            Ok::<_, Status>(tonic::Response::new(Seen {
                tenant,
                leftover,
                tenant_after: TENANT.get(),
                write,
            }))
        });
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Seen, Ask>::default());
            Ok(grpc.unary(handler, request).await)
        })
    }
}

/// The hook of the layer: the tenant from the call's `x-tenant` metadata.
fn tenant_hook(request: &mut http::Request<tonic::body::Body>) {
    if let Some(tenant) = request
        .headers()
        .get("x-tenant")
        .and_then(|v| v.to_str().ok())
    {
        let _ = TENANT.set(tenant.to_string());
    }
}

async fn serve(with_layer: bool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream_of(listener);
    // The server starts where a value is set: its tasks inherit it for reading.
    let started = Context::new().with_value(&TENANT, "startup".to_string());
    let server = async move {
        if with_layer {
            Server::builder()
                .layer(
                    ContextLayer::new()
                        .on_request(tenant_hook as fn(&mut http::Request<tonic::body::Body>)),
                )
                .add_service(Who)
                .serve_with_incoming(incoming)
                .await
        } else {
            Server::builder()
                .add_service(Who)
                .serve_with_incoming(incoming)
                .await
        }
    };
    let mut started = started;
    started.run(|| tokio::spawn(server));
    addr
}

/// The listener as tonic's stream of incoming connections.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> Pin<Box<dyn futures_core::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send>> {
    Box::pin(futures_util::stream::unfold(
        listener,
        |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| stream);
            Some((accepted, listener))
        },
    ))
}

async fn ask(client: &mut tonic::client::Grpc<Channel>, tenant: &str) -> Seen {
    client.ready().await.unwrap();
    let mut request = tonic::Request::new(Ask {
        tenant: tenant.to_string(),
    });
    request
        .metadata_mut()
        .insert("x-tenant", tenant.parse().unwrap());
    let path = http::uri::PathAndQuery::from_static(METHOD);
    let codec = ProstCodec::<Ask, Seen>::default();
    client
        .unary(request, path, codec)
        .await
        .unwrap()
        .into_inner()
}

/// 16 tasks × 10 calls on one HTTP/2 channel, on a hooked multi-thread runtime, with the layer
/// and without it.
#[test]
fn calls_multiplexed_on_one_http2_connection_never_share_values_under_the_hooks() {
    for with_layer in [true, false] {
        support::hooked_runtime(true, false).block_on(async move {
            let addr = serve(with_layer).await;
            let channel = Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let tasks: Vec<_> = (0..16)
                .map(|t| {
                    let mut client = tonic::client::Grpc::new(channel.clone());
                    tokio::spawn(async move {
                        for c in 0..10 {
                            let tenant = format!("t{t}-c{c}");
                            let seen = ask(&mut client, &tenant).await;
                            let case = format!("layer {with_layer}, {tenant}: {seen:?}");
                            assert_eq!(seen.leftover, None, "{case}");
                            if with_layer {
                                assert_eq!(seen.tenant.as_deref(), Some(tenant.as_str()), "{case}");
                                assert_eq!(seen.tenant_after, seen.tenant, "{case}");
                                assert_eq!(seen.write, "ok", "{case}");
                            } else {
                                assert_eq!(seen.tenant.as_deref(), Some("startup"), "{case}");
                                assert_eq!(seen.tenant_after, seen.tenant, "{case}");
                                assert!(seen.write.contains("ContextLayer"), "{case}");
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        });
    }
}
