use contextvars::context_var;

#[context_var]
static REQUEST_ID: u64;

fn main() {
    let token = REQUEST_ID.set(1);
    let _ = REQUEST_ID.reset(token);
    let _ = REQUEST_ID.reset(token);
}
