//! A request's context as one value: several variables set in one expression, code run with
//! overrides, a dump of all bindings, and an audit wrapper that records the request and
//! tenant ids of every action with its timing.
//!
//! Run with `cargo run --example request_context`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use contextvars::{Context, FutureExt, WithContext, context_var};

#[context_var]
static REQUEST_ID: String;

#[context_var]
static TENANT: String;

#[context_var]
static USER: String = String::from("anonymous");

#[context_var]
static ROLE: &'static str = "member";

/// Everything a request carries, set in one go.
struct RequestContext {
    request_id: String,
    tenant: String,
    user: String,
}

impl RequestContext {
    /// A context with this request's values: one expression, the caller's context untouched.
    fn context(self) -> Context {
        Context::new()
            .with_value(&REQUEST_ID, self.request_id)
            .with_value(&TENANT, self.tenant)
            .with_value(&USER, self.user)
    }

    /// Runs `future` for this request.
    fn run<F: Future>(self, future: F) -> WithContext<F> {
        future.with_context(self.context())
    }
}

/// One line of the audit trail.
#[derive(Debug)]
#[allow(dead_code, reason = "printed with `Debug`")]
struct AuditEntry {
    action: &'static str,
    request_id: Option<String>,
    tenant: Option<String>,
    user: String,
    took: Duration,
}

static AUDIT: Mutex<Vec<AuditEntry>> = Mutex::new(Vec::new());

/// Runs `action`, then records who did it, for which request and tenant, and how long it took.
async fn audited<F: Future>(name: &'static str, action: F) -> F::Output {
    let started = Instant::now();
    let output = action.await;
    let entry = AuditEntry {
        action: name,
        request_id: REQUEST_ID.get(),
        tenant: TENANT.get(),
        user: USER.get(),
        took: started.elapsed(),
    };
    AUDIT.lock().expect("audit lock").push(entry);
    output
}

async fn delete_invoice(number: u32) -> String {
    tokio::time::sleep(Duration::from_millis(3)).await;
    format!(
        "invoice {number} deleted by {} as {}",
        USER.get(),
        ROLE.get()
    )
}

async fn handle() -> Vec<String> {
    let mut done = vec![audited("view", async { format!("viewed by {}", USER.get()) }).await];

    // An override for one call: a support engineer acting as admin, without touching the
    // request's own context.
    let elevated = Context::current()
        .with_value(&USER, "support@vendor".to_string())
        .with_value(&ROLE, "admin");
    done.push(
        audited("delete", delete_invoice(7))
            .with_context(elevated)
            .await,
    );
    assert_eq!((USER.get(), ROLE.get()), ("ann".to_string(), "member"));

    // Everything bound right now (defaults are not bindings, so ROLE is not listed).
    println!("bindings of {:?}:", REQUEST_ID.get());
    for (name, value) in &Context::current() {
        println!("    {name} = {value:?}");
    }
    done
}

#[tokio::main]
async fn main() {
    let request = RequestContext {
        request_id: "req-42".into(),
        tenant: "acme".into(),
        user: "ann".into(),
    };
    let done = request.run(handle()).await;
    for line in &done {
        println!("{line}");
    }
    assert_eq!(
        done,
        [
            "viewed by ann",
            "invoice 7 deleted by support@vendor as admin"
        ]
    );

    // Nothing leaked into main's context.
    assert!(Context::current().is_empty());

    let audit = AUDIT.lock().expect("audit lock");
    for entry in audit.iter() {
        println!("audit: {entry:?}");
    }
    assert_eq!(audit.len(), 2);
    assert!(
        audit
            .iter()
            .all(|e| e.request_id.as_deref() == Some("req-42"))
    );
    assert!(audit.iter().all(|e| e.tenant.as_deref() == Some("acme")));
    assert_eq!(audit[1].user, "support@vendor");
}
