//! `scope` and `sync_scope` behave like `tokio::task_local!`'s: the cases of tokio's own
//! task-local tests and doc examples, written for context variables, plus the composition of
//! nested scopes, which tokio gets from setting the value when the scope is first polled.
//!
//! Where ours differs by design (an unset variable reads as `None` instead of panicking; no
//! `take_value`, since a value is shared with the contexts that hold it, not owned by the
//! future), the test says so and asserts our rule.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use contextvars::{Context, FutureExt, context_var};
use tokio::sync::oneshot;

#[context_var]
static REQ_ID: u32;

#[context_var]
static FOO: bool;

#[context_var]
static NUMBER: u32;

#[context_var]
static KEY: u32;

#[context_var]
static A: u32;

#[context_var]
static B: u32;

async fn both() -> (Option<u32>, Option<u32>) {
    tokio::task::yield_now().await;
    (A.get(), B.get())
}

// Tasks spawned with a scope each see their own value, across `.await`s and worker threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_spawned_scope_sees_its_own_value() {
    let mut handles = Vec::new();
    for id in 0..64_u32 {
        handles.push(tokio::spawn(REQ_ID.scope(id, async move {
            assert_eq!(REQ_ID.get(), Some(id));
            REQ_ID.with(|v| {
                assert_eq!(REQ_ID.get(), Some(id));
                assert_eq!(v, Some(&id));
            });
            tokio::time::sleep(Duration::from_millis(u64::from(id % 5))).await;
            assert_eq!(REQ_ID.get(), Some(id));
            assert_eq!(FOO.get(), None);
        })));
    }
    handles.push(tokio::spawn(FOO.scope(true, async {
        assert_eq!(FOO.get(), Some(true));
        assert_eq!(REQ_ID.get(), None);
    })));
    for handle in handles {
        handle.await.unwrap();
    }
}

/// A future that says when it is first polled, never finishes, and reports `KEY` when dropped.
struct ReportsOnDrop {
    polled: Option<oneshot::Sender<()>>,
    dropped: Option<oneshot::Sender<Option<u32>>>,
    ready: bool,
}

impl Future for ReportsOnDrop {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<()> {
        if let Some(polled) = self.polled.take() {
            let _ = polled.send(());
        }
        if self.ready {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for ReportsOnDrop {
    fn drop(&mut self) {
        let _ = self.dropped.take().unwrap().send(KEY.get());
    }
}

// The inner future is dropped with the value still set when its task is aborted.
#[tokio::test]
async fn value_is_there_when_an_aborted_task_drops_the_future() {
    let (polled, on_poll) = oneshot::channel();
    let (dropped, on_drop) = oneshot::channel();
    let handle = tokio::spawn(KEY.scope(
        42,
        ReportsOnDrop {
            polled: Some(polled),
            dropped: Some(dropped),
            ready: false,
        },
    ));
    on_poll.await.unwrap();
    handle.abort();
    assert_eq!(on_drop.await.unwrap(), Some(42));
    assert!(handle.await.unwrap_err().is_cancelled());
}

// The inner future is dropped with the value still set when it completes.
#[tokio::test]
async fn value_is_there_when_a_completed_future_is_dropped() {
    let (dropped, on_drop) = oneshot::channel();
    let handle = tokio::spawn(KEY.scope(
        42,
        ReportsOnDrop {
            polled: None,
            dropped: Some(dropped),
            ready: true,
        },
    ));
    assert_eq!(on_drop.await.unwrap(), Some(42));
    handle.await.unwrap();
}

// And when the scope is dropped before it was ever polled (tokio sets the value for that drop).
#[tokio::test]
async fn value_is_there_when_a_never_polled_scope_is_dropped() {
    let (dropped, on_drop) = oneshot::channel();
    let scope = KEY.scope(
        42,
        ReportsOnDrop {
            polled: None,
            dropped: Some(dropped),
            ready: true,
        },
    );
    drop(scope);
    assert_eq!(on_drop.await.unwrap(), Some(42));
}

// `get` and `try_get` inside a scope. Out of it, `get` is `None` and `try_get` an error naming
// the variable, where tokio's `get` panics.
#[tokio::test]
async fn get_and_try_get() {
    KEY.scope(1, async {
        assert_eq!(KEY.get(), Some(1));
        assert_eq!(KEY.try_get(), Ok(1));
    })
    .await;
    assert_eq!(KEY.get(), None);
    assert_eq!(KEY.try_get().unwrap_err().var(), "KEY");
    assert!(!KEY.with(|v| v.is_some()));
}

// tokio's `LocalKey` example: sequential scopes, and a scope inside a scope of the same
// variable, which shadows it for its length only.
#[tokio::test]
async fn sequential_and_shadowing_scopes() {
    NUMBER
        .scope(1, async {
            assert_eq!(NUMBER.get(), Some(1));
        })
        .await;
    NUMBER
        .scope(2, async {
            assert_eq!(NUMBER.get(), Some(2));
            NUMBER
                .scope(3, async {
                    assert_eq!(NUMBER.get(), Some(3));
                })
                .await;
            assert_eq!(NUMBER.get(), Some(2));
        })
        .await;
    assert_eq!(NUMBER.get(), None);
}

// tokio's `sync_scope` example, and a `sync_scope` of the same variable inside one. tokio
// panics there when the inner `sync_scope` runs inside `with` on the same variable; ours lets
// the closure of `with` open a scope.
#[test]
fn sync_scopes_nest_and_shadow() {
    NUMBER.sync_scope(1, || {
        assert_eq!(NUMBER.get(), Some(1));
        NUMBER.with(|outer| {
            assert_eq!(outer, Some(&1));
            NUMBER.sync_scope(2, || assert_eq!(NUMBER.get(), Some(2)));
        });
        assert_eq!(NUMBER.get(), Some(1));
    });
    assert_eq!(NUMBER.get(), None);
}

// Nested scopes of two variables compose, however the future was built: the inner scope,
// built first, takes its copy when first polled, inside the outer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nested_scopes_of_two_variables_compose() {
    // Awaited in place.
    assert_eq!(B.scope(2, A.scope(1, both())).await, (Some(1), Some(2)));
    // Built in two steps.
    let inner = A.scope(1, both());
    let outer = B.scope(2, inner);
    assert_eq!(outer.await, (Some(1), Some(2)));
    // Spawned plainly and with `contextvars::spawn`, many at once.
    let mut plain = Vec::new();
    let mut inherited = Vec::new();
    for i in 0..64_u32 {
        plain.push(tokio::spawn(B.scope(i + 1000, A.scope(i, both()))));
        inherited.push(contextvars::spawn(B.scope(i + 1000, A.scope(i, both()))));
    }
    for (i, (plain, inherited)) in (0..).zip(plain.into_iter().zip(inherited)) {
        assert_eq!(plain.await.unwrap(), (Some(i), Some(i + 1000)));
        assert_eq!(inherited.await.unwrap(), (Some(i), Some(i + 1000)));
    }
    // Under `with_context` / `in_current_context` too: the scope copies the context it is
    // polled in.
    let ctx = Context::new().with_value(&B, 7);
    assert_eq!(
        A.scope(1, both()).with_context(ctx).await,
        (Some(1), Some(7))
    );
    let seen = Context::new()
        .with_value(&B, 8)
        .run(|| A.scope(1, both()).in_current_context());
    assert_eq!(seen.await, (Some(1), Some(8)));
}

// The copy is taken when the scope is first polled, not when it is made: a value set between
// the two is seen, and later changes to the caller are not.
#[tokio::test]
async fn scope_copies_the_context_when_first_polled() {
    let scope = A.scope(1, both());
    let _b = B.set(2);
    let mut scope = std::pin::pin!(scope);
    assert_eq!(poll_once(&mut scope).await, None);
    let _later = B.set(3);
    assert_eq!(scope.await, (Some(1), Some(2)));
    assert_eq!(B.get(), Some(3));
}

/// Polls `future` once: its output, or `None` if it is pending.
async fn poll_once<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match Pin::new(&mut *future).poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

// What a scope's future sets never reaches the caller, nor an outer scope.
#[tokio::test]
async fn sets_inside_nested_scopes_stay_inside() {
    let mut outer = Context::new();
    let seen = outer
        .run(|| {
            B.scope(2, async {
                let inner = A
                    .scope(1, async {
                        drop(B.set(20));
                        drop(KEY.set(5));
                        (A.get(), B.get(), KEY.get())
                    })
                    .await;
                (inner, (A.get(), B.get(), KEY.get()))
            })
        })
        .await;
    assert_eq!(seen, ((Some(1), Some(20), Some(5)), (None, Some(2), None)));
    assert!(outer.is_empty());
}

// `sync_scope` takes its copy at the call, which is when it runs: nested ones compose too.
#[test]
fn nested_sync_scopes_of_two_variables_compose() {
    let seen = B.sync_scope(2, || A.sync_scope(1, || (A.get(), B.get())));
    assert_eq!(seen, (Some(1), Some(2)));
    assert_eq!((A.get(), B.get()), (None, None));
}
