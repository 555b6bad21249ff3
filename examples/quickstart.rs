//! Quick start: three concurrent "requests", each with its own request id and user, read
//! deep in the call stack after awaits, in a spawned task and in a blocking task, on a
//! multi-thread runtime, with no value ever crossing from one request to another.
//!
//! Run with `cargo run --example quickstart`.

use std::time::Duration;

use contextvars::context_var;

#[context_var]
static REQUEST_ID: u64;

#[context_var]
static USER: String = String::from("guest");

async fn handle(request_id: u64, user: &str) -> String {
    let _request = REQUEST_ID.scoped(request_id);
    let _user = USER.scoped(user.to_string());
    // Let the other requests run on this worker thread in between.
    tokio::time::sleep(Duration::from_millis(10 * (4 - request_id))).await;
    let spawned = contextvars::spawn(async { describe() })
        .await
        .expect("task ran");
    let blocking = contextvars::spawn_blocking(describe)
        .await
        .expect("task ran");
    assert_eq!(spawned, blocking);
    describe()
}

/// Deep in the call stack: nobody passed the request id or the user down here.
fn describe() -> String {
    let id = REQUEST_ID
        .get()
        .map_or_else(|| "none".to_string(), |id| id.to_string());
    format!("request {id} for {}", USER.get())
}

#[tokio::main]
async fn main() {
    let requests = [(1, "ann"), (2, "bob"), (3, "cid")];
    let handles: Vec<_> = requests
        .into_iter()
        .map(|(id, user)| contextvars::spawn(handle(id, user)))
        .collect();
    for ((id, user), handle) in requests.into_iter().zip(handles) {
        let seen = handle.await.expect("request ran");
        println!("{seen}");
        assert_eq!(seen, format!("request {id} for {user}"));
    }
    // The requests' values never reached main's own context.
    println!("main: {}", describe());
    assert_eq!(describe(), "request none for guest");
}
