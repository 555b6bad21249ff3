#[contextvars::main]
async fn main() {}
