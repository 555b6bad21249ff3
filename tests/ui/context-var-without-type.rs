use contextvars::context_var;

#[context_var]
static RETRIES = 3;

fn main() {}
