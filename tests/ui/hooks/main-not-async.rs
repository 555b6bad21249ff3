#[contextvars::main]
fn main() {}
