use contextvars::preserve_context;

#[preserve_context]
async fn serve_forever() -> ! {
    loop {
        tokio::task::yield_now().await;
    }
}

fn main() {
    let _ = serve_forever();
}
