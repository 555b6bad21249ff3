use contextvars::context_var;

// Nothing would write the variable on a log line without the `tracing` feature.
#[context_var(log)]
static TENANT: u64;

fn main() {
    let _ = TENANT.get();
}
