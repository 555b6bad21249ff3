//! End to end through a real broker: a NATS server started by the test on a free loopback
//! port; a producer in one context publishes 10,000 messages from 16 tasks, each with its own
//! user id in the message's `baggage` header; a consumer runs each message in the context it
//! carries (the `nats` example's `handle`) and checks the typed values. Messages with a bad
//! header are refused one by one, and the consumer keeps going.
//!
//! Needs the `nats-server` binary (Debian and Ubuntu: `apt-get install nats-server`). Where it
//! is missing the test says so and passes, unless `CI` is set: there it must run.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use contextvars::baggage::Carrier;
use contextvars::metadata::{MetadataFlags, set_metadata_with};
use contextvars::{Context, FutureExt};
use futures_util::StreamExt;

#[allow(dead_code, reason = "the example's `main` is not used here")]
#[path = "../examples/nats.rs"]
mod nats;

use nats::{Headers, Seen, TENANT, USER_ID, handle, headers};

const TASKS: u64 = 16;
const PER_TASK: u64 = 625; // 10,000 in all
/// Bad headers, each published between good messages, with the key its error must name.
const BAD: [(&str, &str); 4] = [
    ("user_id=seven", "user_id"),
    ("tenant=50%off", "tenant"),
    ("tenant=a;p=%zz", "tenant"),
    ("user id=1", "user id=1"),
];
/// A guard against a hang, not a performance claim.
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);

/// The `nats-server` binary, on `PATH` or where Debian puts it.
fn nats_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/bin".into()])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}

/// The server, stopped when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a server on a free loopback port, or says why it cannot.
fn start() -> Option<Server> {
    let Some(binary) = nats_server() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but `nats-server` is not installed: `apt-get install nats-server`"
        );
        eprintln!(
            "skipped: `nats-server` is not installed (Debian and Ubuntu: `apt-get install \
             nats-server`; elsewhere https://nats.io/download/); CI runs this test"
        );
        return None;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    Some(Server {
        child,
        url: format!("127.0.0.1:{port}"),
    })
}

async fn connect(url: &str) -> async_nats::Client {
    let started = Instant::now();
    loop {
        match async_nats::connect(url).await {
            Ok(client) => return client,
            Err(err) if started.elapsed() > Duration::from_secs(10) => {
                panic!("the NATS server at {url} did not start: {err}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_message_runs_in_the_context_it_carries_and_bad_ones_are_refused_alone() {
    let Some(server) = start() else {
        return;
    };
    let consumer_client = connect(&server.url).await;
    let producer = connect(&server.url).await;
    let mut messages = consumer_client
        .subscribe("orders")
        .await
        .expect("subscribe");
    consumer_client.flush().await.expect("flush");

    // The consumer, in a task of its own: no context of its own at all.
    let total = usize::try_from(TASKS * PER_TASK).expect("small") + BAD.len();
    let consumer = tokio::spawn(async move {
        let (mut good, mut refused) = (Vec::new(), Vec::new());
        while good.len() + refused.len() < total {
            let Some(message) = messages.next().await else {
                break;
            };
            match handle(message).await {
                Ok(seen) => good.push(seen),
                Err(err) => refused.push(err.key().map(str::to_owned)),
            }
        }
        (good, refused)
    });

    // The producer: one context, 16 tasks that inherit it, each message with its own user.
    async {
        let _ = TENANT.set("acme, inc. é".to_string());
        set_metadata_with("batch", "b=1+2", MetadataFlags::BAGGAGE);
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let producer = producer.clone();
                contextvars::spawn(async move {
                    for i in 0..PER_TASK {
                        let user = task * 1_000_000 + i;
                        let _ = USER_ID.set(user);
                        producer
                            .publish_with_headers("orders", headers(), user.to_string().into())
                            .await
                            .expect("publish");
                        // Half-way, the first tasks each publish one message with a bad
                        // header, between good ones.
                        let bad = usize::try_from(task).ok().and_then(|t| BAD.get(t));
                        if let (true, Some((bad, _))) = (i == PER_TASK / 2, bad) {
                            let mut carrier = Headers(async_nats::HeaderMap::new());
                            carrier.set("baggage", (*bad).to_string());
                            producer
                                .publish_with_headers("orders", carrier.0, "bad".into())
                                .await
                                .expect("publish");
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("a producer task");
        }
    }
    .with_context(Context::new())
    .await;
    producer.flush().await.expect("flush");

    let (good, mut refused) = tokio::time::timeout(GIVE_UP_AFTER, consumer)
        .await
        .expect("the consumer finished in time")
        .expect("the consumer did not panic");
    assert_eq!(good.len(), total - BAD.len());
    for seen in &good {
        let user: u64 = seen.payload.parse().expect("a user id");
        assert_eq!(
            seen,
            &Seen {
                payload: seen.payload.clone(),
                tenant: Some("acme, inc. é".into()),
                user_id: Some(user),
                batch: Some("b=1+2".into()),
            }
        );
    }
    let mut users: Vec<u64> = good.iter().map(|s| s.user_id.expect("set")).collect();
    users.sort_unstable();
    users.dedup();
    assert_eq!(users.len(), good.len(), "every message had its own user");

    refused.sort();
    let mut expected: Vec<Option<String>> = BAD
        .iter()
        .map(|(_, key)| Some((*key).to_string()))
        .collect();
    expected.sort();
    assert_eq!(refused, expected);
    drop(server);
}
