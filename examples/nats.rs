//! Typed context across a message broker: a producer publishes NATS messages whose headers
//! carry the context's baggage, and a consumer runs each message in the context it carries.
//!
//! Needs a NATS server: `nats-server -a 127.0.0.1 -p 4222` (Debian and Ubuntu: `apt-get
//! install nats-server`; elsewhere <https://nats.io/download/>), or the address of one in
//! `NATS_URL`. Then:
//!
//! ```text
//! cargo run --example nats
//! ```

use std::time::Duration;

use async_nats::{HeaderMap, Message};
use contextvars::baggage::{BaggageError, Carrier, extract, inject_into};
use contextvars::metadata::{MetadataFlags, get_metadata, set_metadata_with};
use contextvars::{Context, FutureExt, context_var};
use futures_util::StreamExt;

#[context_var(baggage = "tenant")]
pub(crate) static TENANT: String;

#[context_var(baggage = "user_id")]
pub(crate) static USER_ID: u64;

/// NATS headers as a baggage carrier: the few lines a broker client needs.
pub(crate) struct Headers(pub(crate) HeaderMap);

impl Carrier for Headers {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(async_nats::HeaderValue::as_str)
    }

    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

/// The headers of a message to publish from the current context.
pub(crate) fn headers() -> HeaderMap {
    let mut headers = Headers(HeaderMap::new());
    inject_into(&mut headers);
    headers.0
}

/// What the consumer's work saw: the message's payload, and the context it ran in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) payload: String,
    pub(crate) tenant: Option<String>,
    pub(crate) user_id: Option<u64>,
    pub(crate) batch: Option<String>,
}

/// Runs the work for one message in the context it carries; a message whose baggage is bad
/// is refused alone, with the error that names the entry.
pub(crate) async fn handle(mut message: Message) -> Result<Seen, BaggageError> {
    let carrier = Headers(message.headers.take().unwrap_or_default());
    let context = extract(&carrier)?;
    let payload = String::from_utf8_lossy(&message.payload).into_owned();
    Ok(work(payload).with_context(context).await)
}

/// The consumer's work: deep in it, the producer's values are just there.
async fn work(payload: String) -> Seen {
    tokio::task::yield_now().await;
    Seen {
        payload,
        tenant: TENANT.get(),
        user_id: USER_ID.get(),
        batch: get_metadata("batch"),
    }
}

#[tokio::main]
async fn main() {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".to_string());
    let client = match tokio::time::timeout(Duration::from_secs(3), async_nats::connect(&url)).await
    {
        Ok(Ok(client)) => client,
        Ok(Err(err)) => return cannot_connect(&url, &err.to_string()),
        Err(_) => return cannot_connect(&url, "no answer within 3 s"),
    };

    let mut messages = client.subscribe("orders").await.expect("subscribe");
    client.flush().await.expect("flush");

    // The producer: one context, as a request handler would have.
    let producer = client.clone();
    async move {
        let _ = TENANT.set("acme corp".to_string());
        set_metadata_with("batch", "2024-06-01", MetadataFlags::BAGGAGE);
        for user in [7, 8] {
            let _ = USER_ID.set(user);
            let payload = format!("order for user {user}");
            producer
                .publish_with_headers("orders", headers(), payload.into())
                .await
                .expect("publish");
        }
        // A message from a broken producer: its baggage is refused, the next one is handled.
        let mut bad = HeaderMap::new();
        bad.insert("baggage", "user_id=seven");
        producer
            .publish_with_headers("orders", bad, "bad".into())
            .await
            .expect("publish");
        producer
            .publish_with_headers("orders", headers(), "last".into())
            .await
            .expect("publish");
        producer.flush().await.expect("flush");
    }
    .with_context(Context::new())
    .await;

    // The consumer: each message in its own context.
    for _ in 0..4 {
        let Some(message) = messages.next().await else {
            break;
        };
        match handle(message).await {
            Ok(seen) => println!("handled {seen:?}"),
            Err(err) => println!("refused: {err}"),
        }
    }
}

fn cannot_connect(url: &str, why: &str) {
    eprintln!(
        "cannot connect to a NATS server at {url}: {why}\n\
         start one with `nats-server -a 127.0.0.1 -p 4222` (Debian and Ubuntu: \
         `apt-get install nats-server`; elsewhere https://nats.io/download/), \
         or set NATS_URL to the address of one"
    );
}
