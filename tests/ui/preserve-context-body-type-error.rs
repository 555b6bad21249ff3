use contextvars::preserve_context;

#[preserve_context]
async fn handle(request: u64) -> u64 {
    let label = format!("request {request}");
    label
}

fn main() {
    let _ = handle(1);
}
