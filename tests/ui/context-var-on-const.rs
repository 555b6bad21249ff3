use contextvars::context_var;

#[context_var]
const RETRIES: u32 = 3;

fn main() {}
