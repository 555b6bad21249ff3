use contextvars::context_var;

#[context_var]
static REQUEST_ID: u64;

#[context_var]
static TENANT_ID: u64;

fn main() {
    let token = REQUEST_ID.set(1);
    // The token of `REQUEST_ID` cannot reset `TENANT_ID`, although both hold a `u64`.
    let _ = TENANT_ID.reset(token);
}
