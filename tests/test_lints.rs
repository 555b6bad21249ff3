//! The expansions of both macros compile without a warning under strict lints in a user's
//! crate (`cargo clippy --all-targets` checks the clippy ones), in every form they take.

#![deny(warnings, clippy::pedantic, missing_docs, unused_qualifications)]

use std::sync::Arc;

use contextvars::{context_var, preserve_context};

/// No default.
#[context_var]
pub static REQUEST_ID: u64;

/// A default, with a name and a value without `Debug`.
#[context_var(name = "opaque", log)]
pub(crate) static OPAQUE: Arc<Opaque> = Arc::new(Opaque);

#[context_var(crate = ::contextvars)]
static RETRIES: u32 = 3;

/// Propagated as baggage, with a default and a renamed crate.
#[context_var(baggage = "lints.tenant", crate = ::contextvars, log)]
pub static TENANT: u64 = 0;

/// A documented variable with attributes.
#[cfg(test)]
#[context_var]
#[allow(clippy::doc_markdown)]
pub static r#TYPE: &'static str = "t";

/// A value type without `Debug`.
pub struct Opaque;

/// A free function with an elided lifetime and an explicit return type.
#[preserve_context]
pub async fn request_label(prefix: &str) -> String {
    format!("{prefix}-{:?}", REQUEST_ID.get())
}

/// No return type, a pattern argument, `mut`.
#[preserve_context]
pub async fn no_return((a, _): (u32, u32), mut b: u32, _: u8) {
    b += a;
    assert!(b >= a);
}

/// Generics, `impl Trait`, a `where` clause, `?`.
///
/// # Errors
/// When `text` is not a number.
#[preserve_context(crate = ::contextvars)]
pub async fn parse<T>(text: impl AsRef<str>, scale: T) -> Result<u64, std::num::ParseIntError>
where
    T: Into<u64>,
{
    let value: u64 = text.as_ref().parse()?;
    Ok(value * scale.into())
}

/// A type with methods.
pub struct Service {
    name: String,
}

impl Service {
    /// `&self` returning a borrow.
    #[preserve_context]
    pub async fn name(&self) -> &str {
        &self.name
    }

    /// `&mut self`.
    #[preserve_context]
    pub async fn rename(&mut self, name: String) {
        self.name = name;
    }

    /// `self: Arc<Self>`.
    #[preserve_context]
    pub async fn shared(self: Arc<Self>) -> usize {
        Arc::strong_count(&self)
    }

    /// `mut self`.
    #[must_use]
    #[preserve_context]
    pub async fn into_upper(mut self) -> String {
        self.name.make_ascii_uppercase();
        self.name
    }
}

/// A trait with an `async fn`.
pub trait Handler {
    /// Handles a request.
    fn handle(&self, request: &str) -> impl Future<Output = usize> + Send;
}

impl Handler for Service {
    #[preserve_context]
    async fn handle(&self, request: &str) -> usize {
        self.name.len() + request.len() + usize::try_from(RETRIES.get()).unwrap_or_default()
    }
}

#[test]
fn expansions_run() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let _token = REQUEST_ID.set(1);
        assert_eq!(request_label("r").await, "r-Some(1)");
        no_return((1, 2), 3, 4).await;
        assert_eq!(parse("4", 2_u8).await, Ok(8));
        let mut service = Service { name: "a".into() };
        service.rename("svc".into()).await;
        assert_eq!(service.name().await, "svc");
        assert_eq!(service.handle("xy").await, 3 + 2 + 3);
        assert_eq!(
            Arc::new(Service {
                name: String::new()
            })
            .shared()
            .await,
            1
        );
        assert_eq!(service.into_upper().await, "SVC");
        let _guard = OPAQUE.scoped(Arc::new(Opaque));
        assert_eq!(r#TYPE.get(), "t");
    });
}
