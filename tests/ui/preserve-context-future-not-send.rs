use std::rc::Rc;

use contextvars::preserve_context;

// The original `async fn` is not `Send` (an `Rc` lives across an await), so neither is
// the rewritten one: the attribute adds no `Send` bound and removes none.
#[preserve_context]
async fn handle() -> u64 {
    let shared = Rc::new(1);
    tokio::task::yield_now().await;
    *shared
}

fn main() {
    let _ = tokio::spawn(handle());
}
