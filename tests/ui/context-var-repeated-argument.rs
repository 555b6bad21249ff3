use contextvars::context_var;

#[context_var(name = "tenant", name = "tenant.id")]
static TENANT: u64;

fn main() {
    let _ = TENANT.get();
}
