use contextvars::context_var;

#[context_var]
fn request_id() -> u64 {
    7
}

fn main() {}
