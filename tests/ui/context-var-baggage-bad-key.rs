use contextvars::context_var;

#[context_var(baggage = "tenant id")]
static TENANT: String;

fn main() {}
