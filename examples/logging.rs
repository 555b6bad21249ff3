//! Logging with context: the request, user, tenant and trace ids on every log line, from the
//! handler, from a task it spawns and from a thread it starts, with nobody passing them to
//! the log calls. A variable declared without `log` (here, an API key) never reaches a log.
//!
//! Each event is written twice, by tracing-subscriber's text format and by its JSON format,
//! both wrapped in `contextvars::tracing::ContextFields`.
//!
//! Run with `cargo run --example logging`.

use std::time::Duration;

use contextvars::tracing::ContextFields;
use contextvars::{Context, context_var};
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

#[context_var(name = "request_id", log)]
static REQUEST_ID: String;

#[context_var(name = "user", log)]
static USER: String;

#[context_var(name = "tenant", log)]
static TENANT: String;

#[context_var(name = "trace_id", log)]
static TRACE_ID: u64;

/// A secret: declared without `log`, so no log line ever shows it.
#[context_var(name = "api_key")]
static API_KEY: String;

async fn handle(order: u32) {
    tracing::info!(order, "handling order");
    let audit = contextvars::spawn(async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        tracing::info!(order, "audit written by a spawned task");
    });
    let render = contextvars::thread::spawn(move || {
        tracing::info!(order, "receipt rendered on a thread");
    });
    audit.await.expect("audit task");
    render.join().expect("render thread");
    tracing::warn!(order, "order handled");
}

#[tokio::main]
async fn main() {
    tracing_subscriber::registry()
        .with(fmt::layer().map_event_format(ContextFields::text))
        .with(fmt::layer().json().map_event_format(ContextFields::json))
        .init();

    tracing::info!("no request yet: no context fields on this line");

    // Two concurrent requests, each in a context of its own (a server gets this from the
    // tower layer, `contextvars::tower::ContextLayer`).
    let requests = [
        ("req-1", "ann", "acme", 0xa1, 17),
        ("req-2", "bob", "globex", 0xb2, 42),
    ];
    let handles: Vec<_> = requests
        .into_iter()
        .map(|(id, user, tenant, trace, order)| {
            let mut context = Context::new()
                .with_value(&REQUEST_ID, id.to_string())
                .with_value(&USER, user.to_string())
                .with_value(&TENANT, tenant.to_string())
                .with_value(&TRACE_ID, trace)
                .with_value(&API_KEY, "sk-live-secret".to_string());
            context.run(|| contextvars::spawn(handle(order)))
        })
        .collect();
    for handle in handles {
        handle.await.expect("request");
    }
}
