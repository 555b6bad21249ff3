//! Background work that keeps its request's context: a spawned task, blocking work, a job
//! queued now and run later by a worker (`#[preserve_context]`), and named tasks.
//!
//! Run with `cargo run --example background`.

use std::time::Duration;

use contextvars::{context_var, preserve_context};
use tokio::sync::mpsc;

#[context_var]
static REQUEST_ID: String;

/// The name of the background task the code runs in, if any.
#[context_var]
static TASK_NAME: &'static str = "main";

fn describe() -> String {
    let request = REQUEST_ID.get().unwrap_or_else(|| "-".into());
    format!("task {:<12} request {request}", TASK_NAME.get())
}

/// Sends a notification: captures the caller's context when *called*, so wherever and
/// whenever the future runs, it runs for the request that made it.
#[preserve_context]
async fn send_notification(to: &'static str) -> String {
    tokio::time::sleep(Duration::from_millis(2)).await;
    format!("notified {to}: {}", describe())
}

/// The same without the attribute: the future runs in whatever context polls it.
async fn send_notification_plain(to: &'static str) -> String {
    tokio::time::sleep(Duration::from_millis(2)).await;
    format!("notified {to}: {}", describe())
}

/// A task with a name that its code (and its logs) can read, spawned in a copy of the
/// caller's context.
fn spawn_named<F>(name: &'static str, future: F) -> contextvars::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    contextvars::spawn(TASK_NAME.scope(name, future))
}

/// A job for the worker, and whether it was made with `#[preserve_context]`.
type Job = (std::pin::Pin<Box<dyn Future<Output = String> + Send>>, bool);

async fn handle_request(id: &str, queue: mpsc::UnboundedSender<Job>) {
    let _id = REQUEST_ID.scoped(id.to_string());

    // 1. A spawned task: starts with a snapshot of the request's context, taken now.
    let task = contextvars::spawn(async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        format!("spawned:  {}", describe())
    });

    // 2. Blocking work (a hash, a file, a C library) on tokio's blocking pool.
    let blocking = contextvars::spawn_blocking(|| format!("blocking: {}", describe()));

    // 3. Named tasks.
    let cleanup = spawn_named("cleanup", async { format!("named:    {}", describe()) });
    let metrics = spawn_named("metrics", async { format!("named:    {}", describe()) });

    // 4. Jobs made here and run later by a worker that has no context of its own.
    queue
        .send((Box::pin(send_notification("ann@example.com")), true))
        .expect("worker runs");
    queue
        .send((Box::pin(send_notification_plain("bob@example.com")), false))
        .expect("worker runs");

    for line in [task.await, blocking.await, cleanup.await, metrics.await] {
        let line = line.expect("task ran");
        println!("{line}");
        assert!(line.ends_with(&format!("request {id}")), "{line}");
    }
}

#[tokio::main]
async fn main() {
    let (queue, mut jobs) = mpsc::unbounded_channel::<Job>();
    // A worker started with plain `tokio::spawn`, as a job runner would be.
    let worker = tokio::spawn(async move {
        let mut results = Vec::new();
        while let Some((job, preserved)) = jobs.recv().await {
            results.push((job.await, preserved));
        }
        results
    });

    let requests = [
        contextvars::spawn(handle_request("req-1", queue.clone())),
        contextvars::spawn(handle_request("req-2", queue)),
    ];
    for request in requests {
        request.await.expect("request");
    }
    for (line, preserved) in worker.await.expect("worker") {
        println!("worker:   {line}");
        // Only the `#[preserve_context]` job still knows its request.
        assert_eq!(line.contains("request req-"), preserved, "{line}");
    }
    assert_eq!(describe(), format!("task {:<12} request -", "main"));
}
