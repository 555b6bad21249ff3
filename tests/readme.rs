//! The README's snippets that are not complete programs, compiled. The README marks them
//! `ignore` (its complete examples run as doctests), and `readme_snippets_are_compiled_here`
//! checks that every line of each one is, in order, in this file (the gRPC one in
//! `tests/e2e_grpc_baggage.rs`), so that a snippet cannot change without its compiled copy.
//! The snippets' modules are not formatted, to keep their lines as the README shows them.

use std::path::Path;

/// The code lines of a snippet, trimmed, without blank lines and comment-only lines.
fn code_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("//"))
        .collect()
}

/// The README's code blocks marked `rust,ignore`.
fn ignored_snippets(readme: &str) -> Vec<String> {
    let mut snippets = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match &mut current {
            None if line.trim_start() == "```rust,ignore" => current = Some(String::new()),
            Some(snippet) if line.trim_start() == "```" => {
                snippets.push(std::mem::take(snippet));
                current = None;
            }
            Some(snippet) => {
                snippet.push_str(line);
                snippet.push('\n');
            }
            None => {}
        }
    }
    snippets
}

/// Whether `needle`'s lines are, in order, among `haystack`'s.
fn is_subsequence(needle: &[&str], haystack: &[&str]) -> bool {
    let mut rest = haystack.iter();
    needle
        .iter()
        .all(|line| rest.any(|candidate| candidate == line))
}

#[test]
fn readme_snippets_are_compiled_here() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |path: &str| std::fs::read_to_string(root.join(path)).expect(path);
    let readme = read("README.md");
    let here = read("tests/readme.rs");
    let grpc = read("tests/e2e_grpc_baggage.rs");
    let snippets = ignored_snippets(&readme);
    assert_eq!(
        snippets.len(),
        7,
        "the README's `ignore` snippets: {snippets:#?}"
    );
    for snippet in &snippets {
        let lines = code_lines(snippet);
        assert!(
            is_subsequence(&lines, &code_lines(&here))
                || is_subsequence(&lines, &code_lines(&grpc)),
            "a README snippet is not compiled by tests/readme.rs or \
             tests/e2e_grpc_baggage.rs:\n{snippet}"
        );
    }
}

#[test]
fn the_check_sees_a_changed_line() {
    let compiled = code_lines("let a = 1;\n// a comment\n    let b = 2;\nlet c = 3;\n");
    assert!(is_subsequence(
        &code_lines("let a = 1;\nlet c = 3;\n"),
        &compiled
    ));
    assert!(!is_subsequence(
        &code_lines("let c = 3;\nlet a = 1;\n"),
        &compiled
    ));
    assert!(!is_subsequence(&code_lines("let a = 2;\n"), &compiled));
}

/// Automatic flow (feature `hooks`).
#[cfg(all(tokio_unstable, feature = "hooks"))]
#[rustfmt::skip]
mod hooks {
    use contextvars::context_var;

    #[context_var]
    static REQUEST_ID: u64;

#[contextvars::main]                  // #[tokio::main] + hooks; same arguments
async fn main() {
    let _id = REQUEST_ID.set(7);
    let seen = tokio::spawn(async { REQUEST_ID.get() }).await.unwrap();
    assert_eq!(seen, Some(7));        // a plain tokio::spawn inherited it, to read
}

    #[test]
    fn runs() {
        main();
        let mut builder = tokio::runtime::Builder::new_current_thread();
        let runtime = contextvars::hooks::install(&mut builder).build().unwrap();
        runtime.block_on(async {
            let _id = REQUEST_ID.set(8);
            assert_eq!(tokio::spawn(async { REQUEST_ID.get() }).await.unwrap(), Some(8));
        });
    }
}

/// In a service: the tower layer.
#[rustfmt::skip]
mod tower_layer {
    use axum::extract::Request;
    use axum::middleware::Next;
    use axum::response::Response;

    async fn whoami() -> String {
        String::new()
    }

    async fn authenticate(request: Request, next: Next) -> Response {
        next.run(request).await
    }

    #[allow(dead_code)]
    fn app() -> axum::Router {
use axum::{Router, extract::Request, middleware, routing::get};
use contextvars::{context_var, tower::ContextLayer};

#[context_var]
static TRACE_ID: String;

let app = Router::new()
    .route("/whoami", get(whoami))
    .layer(middleware::from_fn(authenticate))     // inside the layer: may read and set
    .layer(ContextLayer::new().body_in_context().on_request(|req: &mut Request| {
        if let Some(id) = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()) {
            let _ = TRACE_ID.set(id.to_string());
        }
    }));                                          // the last `.layer()`: outermost
        app
    }
}

/// On every log line.
#[rustfmt::skip]
mod log_lines {
    #[test]
    fn installs() {
use contextvars::{context_var, tracing::ContextFields};
use tracing_subscriber::{fmt, prelude::*};

#[context_var(name = "tenant", log)]
static TENANT: String;

tracing_subscriber::registry()
    .with(fmt::layer().map_event_format(ContextFields::text)) // ... tenant="acme"
    .init();
        let _tenant = TENANT.scoped("acme".to_string());
        tracing::info!("a line with the tenant");
        // The JSON form the README shows in a comment.
        let _json = fmt::layer::<tracing_subscriber::Registry>().json().map_event_format(ContextFields::json);
    }
}

/// The span flows too. Compiled, not run: carrying spans is process-wide.
#[rustfmt::skip]
mod span_flow {
    #[allow(dead_code)]
    fn start_up() {
contextvars::tracing::carry_spans(); // at start-up, once
    }

#[allow(dead_code)]
async fn handler() {                 // polled inside the request's span
    let charge = contextvars::spawn(async {
        tracing::info!("charged");   // parent: the request's span, with its fields
    });
    charge.await.unwrap();
}
}

/// Across services: W3C Baggage.
#[rustfmt::skip]
mod baggage {
    #[allow(dead_code)]
    async fn handler() {}

    #[allow(dead_code)]
    fn service() {
        use axum::{Router, routing::get};
        use contextvars::context_var;
        use axum::body::Bytes;
        use contextvars::tower::{BaggageLayer, BaggageService, ContextLayer};
        use http_body_util::Empty;
        use hyper_util::client::legacy::Client;
        use hyper_util::client::legacy::connect::HttpConnector;
        use hyper_util::rt::TokioExecutor;
        use tower::Layer;

#[context_var(baggage = "user_id")]
static USER_ID: u64;                                              // 1. mark the variable

let app = Router::new().route("/", get(handler))
    .layer(ContextLayer::new().accept_baggage());                 // 2. read incoming baggage
let client = BaggageLayer::new().layer(Client::builder(TokioExecutor::new()).build_http());
                                                                  // 3. write it on every call
        let _: Router = app;
        let _: BaggageService<Client<HttpConnector, Empty<Bytes>>> = client;
        let _ = &USER_ID;
    }
}

/// Through OpenTelemetry's propagators. This test alone sets the binary's global propagator.
#[cfg(feature = "opentelemetry")]
#[rustfmt::skip]
mod otel_propagator {
    use std::collections::HashMap;

    use contextvars::{Context, FutureExt, context_var};
    use opentelemetry::propagation::TextMapCompositePropagator;
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    #[context_var(baggage = "order_id")]
    static ORDER_ID: u64;

    const TRACE: u128 = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;

    /// The consumer's work: the sender's order and trace. Async, as a consumer's work is.
    #[allow(clippy::unused_async)]
    async fn handle(message: Vec<u8>) {
        assert_eq!(message, b"order");
        assert_eq!(ORDER_ID.get(), Some(17));
        let cx = opentelemetry::Context::current();
        assert_eq!(cx.span().span_context().trace_id(), TraceId::from_bytes(TRACE.to_be_bytes()));
    }

    #[tokio::test]
    async fn carries_the_variables_beside_the_trace() {
        let mut headers: HashMap<String, String> = HashMap::new();
        let message = b"order".to_vec();
let propagator = TextMapCompositePropagator::new(vec![
    Box::new(TraceContextPropagator::new()),
    Box::new(opentelemetry_sdk::propagation::BaggagePropagator::new()), // first
    Box::new(contextvars::opentelemetry::BaggagePropagator::new()),     // after it
]);
opentelemetry::global::set_text_map_propagator(propagator);
        {
            let span = SpanContext::new(
                TraceId::from_bytes(TRACE.to_be_bytes()),
                SpanId::from_bytes(7u64.to_be_bytes()),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            );
            let _trace = opentelemetry::Context::new().with_remote_span_context(span).attach();
            let _order = ORDER_ID.scoped(17);
opentelemetry::global::get_text_map_propagator(|p| p.inject(&mut headers));
        }
        assert_eq!(headers["baggage"], "order_id=17");
        assert_eq!(ORDER_ID.get(), None);
let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&headers));
let context = contextvars::opentelemetry::extracted(&cx).unwrap_or_else(Context::current);
handle(message).with_context(context).await;
    }
}
