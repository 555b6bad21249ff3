use contextvars::context_var;

#[context_var(name = "")]
static TENANT: u64;

fn main() {
    let _ = TENANT.get();
}
