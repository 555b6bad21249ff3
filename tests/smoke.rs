//! Smoke test: the macros expand and the facade re-exports the runtime.
use contextvars::{Context, context_var};

#[context_var]
static REQUEST_ID: String;

#[context_var(name = "retries")]
static RETRIES: u32 = 3;

struct Opaque;

#[context_var(log)]
pub(crate) static OPAQUE: std::sync::Arc<Opaque>;

#[test]
fn smoke() {
    assert_eq!(REQUEST_ID.get(), None);
    assert_eq!(RETRIES.get(), 3);
    let t = REQUEST_ID.set("r1".into());
    let _g = RETRIES.scoped(5);
    let _o = OPAQUE.scoped(std::sync::Arc::new(Opaque));
    let ctx = Context::current();
    let dump = format!("{ctx:?}");
    assert!(dump.contains("\"REQUEST_ID\": \"r1\""), "{dump}");
    assert!(dump.contains("\"retries\": 5"), "{dump}");
    assert!(dump.contains("Arc<smoke::Opaque>"), "{dump}");
    REQUEST_ID.reset(t).unwrap();
}
