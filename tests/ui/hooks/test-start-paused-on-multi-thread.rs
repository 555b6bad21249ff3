#[contextvars::test(flavor = "multi_thread", start_paused = true)]
async fn sleeps() {}

fn main() {}
