use contextvars::context_var;

#[context_var]
struct Request {
    id: u64,
}

fn main() {}
