//! A multi-tenant web service: axum, the `contextvars` tower layer, and a `TenantContext`.
//!
//! The layer runs every request in a context of its own. Its hook reads `x-tenant-id`,
//! resolves the tenant and sets it, and takes `x-request-id` (or makes one up). Nothing passes
//! the tenant down the call stack, yet it is there deep inside, after awaits, in a task
//! spawned with the request's context and in a blocking task, and on every log line.
//!
//! Run with `cargo run --example tenants` (listens on `127.0.0.1:$PORT`, default 3000), then:
//!
//! ```text
//! curl -s -H 'x-tenant-id: acme' localhost:3000/whoami
//! {"tenant":"acme","spawned":"acme","blocking":"acme","request_id":"req-…"}
//! curl -s -i localhost:3000/whoami
//! HTTP/1.1 400 Bad Request
//! {"error":"missing or invalid `x-tenant-id` header"}
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use contextvars::tower::{BodyInContext, ContextLayer};
use contextvars::{Scope, context_var};
use serde::Serialize;

/// A tenant, as the directory knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tenant {
    pub(crate) id: String,
}

/// The tenant the current request works for. `log`: written on every log line.
#[context_var(name = "tenant", log)]
static TENANT: Arc<Tenant>;

/// The request's id, from `x-request-id` or generated. `log`: on every log line too.
#[context_var(name = "request_id", log)]
pub(crate) static REQUEST_ID: String;

/// Free-form metadata of the request (copy on write: each set makes a new map).
#[context_var(name = "metadata")]
static METADATA: Arc<BTreeMap<String, String>>;

/// The tenant helpers the rest of the code base uses.
pub(crate) struct TenantContext;

/// There is no tenant in the current context.
#[derive(Debug)]
pub(crate) struct NoTenant;

impl TenantContext {
    /// The current tenant, or an error to turn into a 400.
    pub(crate) fn current() -> Result<Arc<Tenant>, NoTenant> {
        TENANT.get().ok_or(NoTenant)
    }

    /// The current tenant, if any (for code that also runs outside requests).
    pub(crate) fn optional() -> Option<Arc<Tenant>> {
        TENANT.get()
    }

    /// Runs a background job for `tenant`, outside any request: the job and all it spawns
    /// see that tenant, and nothing it sets escapes.
    pub(crate) fn scope<F: Future>(tenant: Arc<Tenant>, job: F) -> Scope<F> {
        TENANT.scope(tenant, job)
    }

    /// Adds `key = value` to the request's metadata.
    pub(crate) fn set_metadata(key: &str, value: &str) {
        let mut metadata = METADATA.with(|m| m.map(|m| BTreeMap::clone(m)).unwrap_or_default());
        metadata.insert(key.to_string(), value.to_string());
        let _ = METADATA.set(Arc::new(metadata));
    }

    /// One metadata value of the request.
    pub(crate) fn metadata(key: &str) -> Option<String> {
        METADATA.with(|m| m.and_then(|m| m.get(key).cloned()))
    }

    /// All the request's metadata: a copy, which the caller may change freely.
    pub(crate) fn all_metadata() -> BTreeMap<String, String> {
        METADATA.with(|m| m.map(|m| BTreeMap::clone(m)).unwrap_or_default())
    }
}

/// Looks a tenant up by id. A real service asks a database; here every well-formed id is a
/// tenant.
fn resolve_tenant(id: &str) -> Option<Tenant> {
    let well_formed = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then(|| Tenant { id: id.to_string() })
}

/// A request id unique in this process and unlikely to repeat across restarts.
fn generate_request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("req-{start:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The middleware: a context per request, with the tenant and the request id set.
pub(crate) fn tenant_layer() -> ContextLayer<impl Fn(&mut Request) + Send + Sync, BodyInContext> {
    ContextLayer::new()
        .body_in_context()
        .on_request(|request: &mut Request| {
            let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
            let request_id =
                header("x-request-id").map_or_else(generate_request_id, str::to_string);
            if let Some(tenant) = header("x-tenant-id").and_then(resolve_tenant) {
                let _ = TENANT.set(Arc::new(tenant));
            }
            let _ = REQUEST_ID.set(request_id);
        })
}

/// The service: routes behind the tenant layer.
pub(crate) fn app() -> Router {
    Router::new()
        .route("/whoami", get(whoami))
        .layer(tenant_layer())
}

/// The answer of `GET /whoami`: the tenant as seen from four places.
#[derive(Debug, Serialize)]
struct WhoAmI {
    /// Read deep in the call stack, after awaits.
    tenant: String,
    /// Read in a task spawned with the request's context, after a short sleep.
    spawned: String,
    /// Read in a blocking task.
    blocking: String,
    request_id: String,
}

/// An error as JSON, with its status.
struct ApiError(StatusCode, &'static str);

impl From<NoTenant> for ApiError {
    fn from(NoTenant: NoTenant) -> Self {
        ApiError(
            StatusCode::BAD_REQUEST,
            "missing or invalid `x-tenant-id` header",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

async fn whoami() -> Result<Json<WhoAmI>, ApiError> {
    let tenant = service::tenant_name().await?;
    TenantContext::set_metadata("handler", "whoami");
    let spawned = contextvars::spawn(async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        TenantContext::current().map(|t| t.id.clone())
    })
    .await
    .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "task failed"))??;
    let blocking = contextvars::spawn_blocking(|| TenantContext::current().map(|t| t.id.clone()))
        .await
        .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "task failed"))??;
    let request_id = REQUEST_ID.get().unwrap_or_default();
    tracing::info!(metadata = ?TenantContext::all_metadata(), "whoami answered");
    Ok(Json(WhoAmI {
        tenant,
        spawned,
        blocking,
        request_id,
    }))
}

/// Business code, a few calls away from the handler.
mod service {
    use super::{NoTenant, TenantContext};

    pub(super) async fn tenant_name() -> Result<String, NoTenant> {
        tokio::task::yield_now().await;
        repository::load().await
    }

    mod repository {
        use super::{NoTenant, TenantContext};

        pub(super) async fn load() -> Result<String, NoTenant> {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            let tenant = TenantContext::current()?;
            tracing::debug!(handler = ?TenantContext::metadata("handler"), "loading");
            Ok(tenant.id.clone())
        }
    }
}

/// A nightly job for one tenant, outside any request.
async fn nightly_report(tenant: Arc<Tenant>) {
    let expected = tenant.id.clone();
    TenantContext::scope(tenant, async move {
        tokio::task::yield_now().await;
        let seen = TenantContext::optional().map(|t| t.id.clone());
        assert_eq!(seen, Some(expected), "the job runs for its tenant");
        tracing::info!("nightly report done"); // the log line carries the tenant
    })
    .await;
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    use contextvars::tracing::ContextFields;

    tracing_subscriber::fmt()
        .event_format(ContextFields::text(tracing_subscriber::fmt::format()))
        .init();

    nightly_report(Arc::new(Tenant { id: "acme".into() })).await;
    assert!(
        TenantContext::optional().is_none(),
        "the job's tenant stayed in the job"
    );

    let port = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000_u16);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app()).await
}
