use contextvars::context_var;

/// Neither `Display` nor `FromStr`: it cannot cross a hop as text.
#[derive(Clone, Debug)]
struct Tenant {
    id: u64,
}

#[context_var(baggage = "tenant")]
static TENANT: Tenant;

fn main() {
    let _ = TENANT.get().map(|t| t.id);
}
