use contextvars::preserve_context;

#[preserve_context(crate = ::contextvars, crate = ::contextvars)]
async fn handle(request: u64) -> u64 {
    request + 1
}

fn main() {
    let _ = handle(1);
}
