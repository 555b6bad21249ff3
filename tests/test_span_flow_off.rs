//! Spans do not flow until `contextvars::tracing::carry_spans()` is called: this binary
//! never calls it.

#![cfg(feature = "tracing")]

#[path = "support/spans.rs"]
mod spans;

use contextvars::FutureExt;
use tracing::{info, info_span};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_carry_spans_a_spawned_task_logs_outside_the_span() {
    spans::install();
    let (task, wrapped) = info_span!("request", test = "off").in_scope(|| {
        (
            contextvars::spawn(async { info!("off: child") }),
            async { info!("off: wrapped") }.in_current_context(),
        )
    });
    task.await.unwrap();
    wrapped.await;
    contextvars::thread::spawn(|| info!("off: thread"))
        .join()
        .unwrap();
    assert_eq!(spans::event("off: child").parent, None);
    assert_eq!(spans::event("off: wrapped").parent, None);
    assert_eq!(spans::event("off: thread").parent, None);
}
