use contextvars::preserve_context;

trait Service {
    #[preserve_context]
    async fn call(&self, request: u64) -> u64;
}

fn main() {}
