use contextvars::context_var;

#[context_var(log = 1)]
static TENANT: u64;

fn main() {
    let _ = TENANT.get();
}
