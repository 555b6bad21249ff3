//! Async (SPEC S5, B23–B24, B29): values survive awaits on any worker thread, futures and
//! streams run in their context on every poll and are dropped inside it, and their sets never
//! reach the caller.

mod support;

use support::Rng;

use std::collections::HashSet;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use contextvars::{Context, FutureExt, context_var};
use futures_core::Stream;

#[context_var]
static ID: u64;

#[context_var]
static LABEL: String;

#[context_var]
static COUNT: u32 = 0;

#[context_var(name = "async.tag")]
static TAG: u32;

/// Returns `Pending` once (waking itself), then `Ready`: a yield that needs no runtime.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

fn poll_once<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut std::task::Context::from_waker(Waker::noop()))
}

/// What a [`DropProbe`] saw: `TAG` and `ID` when it was dropped.
type Seen = Arc<Mutex<Option<(Option<u32>, Option<u64>)>>>;

/// Records what the context holds when it is dropped.
struct DropProbe {
    seen: Seen,
}

impl Drop for DropProbe {
    fn drop(&mut self) {
        *self.seen.lock().unwrap() = Some((TAG.get(), ID.get()));
        // A `Drop` may also set variables while the context is being left.
        drop(LABEL.set("set in drop".to_string()));
    }
}

async fn random_pause(rng: &mut Rng) {
    match rng.below(4) {
        0 => {}
        1 | 2 => tokio::task::yield_now().await,
        _ => tokio::time::sleep(Duration::from_micros(rng.below(200))).await,
    }
}

// B23: thousands of concurrent tasks, each setting its own values and checking them after
// every await, with random yields and sleeps, on a multi-thread runtime.
#[test]
fn values_survive_awaits_across_worker_threads() {
    const TASKS: u64 = 4000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .unwrap();
    let migrated = rt.block_on(async {
        let handles: Vec<_> = (0..TASKS)
            .map(|i| {
                let task = async move {
                    let mut rng = Rng::new(i);
                    let mut threads = HashSet::new();
                    let _id = ID.set(i);
                    let _label = LABEL.scoped(format!("task-{i}"));
                    for step in 0..20u32 {
                        random_pause(&mut rng).await;
                        threads.insert(std::thread::current().id());
                        assert_eq!(ID.get(), Some(i));
                        assert_eq!(LABEL.get(), Some(format!("task-{i}")));
                        assert_eq!(COUNT.get(), step);
                        drop(COUNT.set(step + 1));
                    }
                    threads.len() > 1
                };
                // Both ways into a task: the helper, and plain `tokio::spawn` of a wrapped future.
                if i % 2 == 0 {
                    contextvars::spawn(task)
                } else {
                    let handle = tokio::spawn(task.in_current_context());
                    contextvars::spawn(async move { handle.await.unwrap() })
                }
            })
            .collect();
        let mut migrated = 0;
        for handle in handles {
            migrated += u32::from(handle.await.unwrap());
        }
        migrated
    });
    eprintln!("{migrated} of {TASKS} tasks resumed on more than one worker thread");
}

// B23: the root future of `block_on` keeps its values across awaits too.
#[test]
fn values_survive_awaits_in_the_block_on_future() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut rng = Rng::new(7);
        let _id = ID.set(42);
        for _ in 0..50 {
            random_pause(&mut rng).await;
            let _ = tokio::spawn(async {}).await;
            assert_eq!(ID.get(), Some(42));
        }
    });
}

// B24: two futures polled in turn by one task each keep their own context.
#[test]
fn futures_sharing_a_task_keep_their_own_contexts() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let _outer = TAG.set(0);
        let make = |tag: u32| {
            async move {
                for step in 0..50u32 {
                    assert_eq!((TAG.get(), COUNT.get()), (Some(tag), step));
                    drop(COUNT.set(step + 1));
                    YieldOnce(false).await;
                }
                COUNT.get()
            }
            .with_context(Context::new().with_value(&TAG, tag))
        };
        let (a, b) = tokio::join!(make(1), make(2));
        assert_eq!((a, b), (50, 50));
        assert_eq!((TAG.get(), COUNT.get()), (Some(0), 0));
    });
}

// B24: the context is entered on every poll and left between polls; what the future sets
// stays in its wrapper's context.
#[test]
fn with_context_enters_the_context_on_every_poll() {
    Context::new().run(with_context_enters_the_context_on_every_poll_body);
}

fn with_context_enters_the_context_on_every_poll_body() {
    let _caller = TAG.set(99);
    let future = async {
        let first = TAG.get();
        drop(TAG.set(2));
        drop(ID.set(5));
        YieldOnce(false).await;
        (first, TAG.get(), ID.get())
    };
    let mut future = pin!(future.with_context(Context::new().with_value(&TAG, 1)));
    assert!(poll_once(future.as_mut()).is_pending());
    assert_eq!(
        (TAG.get(), ID.get()),
        (Some(99), None),
        "the future's sets leaked between polls"
    );
    assert_eq!(future.context().get(&TAG), Some(&2));
    assert_eq!(future.context().get(&ID), Some(&5));
    let _between = TAG.set(100);
    assert_eq!(
        poll_once(future.as_mut()),
        Poll::Ready((Some(1), Some(2), Some(5)))
    );
    assert_eq!((TAG.get(), ID.get()), (Some(100), None));
}

// B24: `in_current_context` takes its snapshot at the call, not at the first poll.
#[test]
fn in_current_context_snapshots_at_the_call() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let token = TAG.set(1);
        let future = async {
            let seen = TAG.get();
            drop(TAG.set(3));
            seen
        }
        .in_current_context();
        TAG.reset(token).unwrap();
        let _later = TAG.set(2);
        assert_eq!(future.await, Some(1));
        assert_eq!(TAG.get(), Some(2), "the future's set reached the caller");
    });
}

// B24: a future dropped before completion is dropped inside its context; a `Drop` there may
// read and set variables, and its sets stay in that context.
#[test]
fn inner_future_is_dropped_inside_its_context() {
    Context::new().run(inner_future_is_dropped_inside_its_context_body);
}

fn inner_future_is_dropped_inside_its_context_body() {
    let _caller = ID.set(1);
    let seen = Arc::new(Mutex::new(None));
    let probe = DropProbe {
        seen: Arc::clone(&seen),
    };
    let future = async move {
        let _probe = probe;
        drop(ID.set(2));
        std::future::pending::<()>().await;
    };
    let mut future = Box::pin(future.with_context(Context::new().with_value(&TAG, 7)));
    assert!(poll_once(future.as_mut()).is_pending());
    assert_eq!(*seen.lock().unwrap(), None);
    drop(future);
    assert_eq!(*seen.lock().unwrap(), Some((Some(7), Some(2))));
    assert_eq!((TAG.get(), ID.get(), LABEL.get()), (None, Some(1), None));
}

// B24: the same for a future never polled, and for one dropped by an aborted task.
#[test]
fn unpolled_and_aborted_futures_are_dropped_inside_their_context() {
    let seen = Arc::new(Mutex::new(None));
    let probe = DropProbe {
        seen: Arc::clone(&seen),
    };
    let future = async move {
        let _probe = probe;
    };
    drop(future.with_context(Context::new().with_value(&TAG, 8)));
    assert_eq!(*seen.lock().unwrap(), Some((Some(8), None)));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(None));
    let probe = DropProbe {
        seen: Arc::clone(&seen),
    };
    rt.block_on(async {
        let _tag = TAG.set(9);
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let task = contextvars::spawn(async move {
            let _probe = probe;
            drop(ID.set(3));
            started_tx.send(()).unwrap();
            std::future::pending::<()>().await;
        });
        started_rx.await.unwrap();
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
    });
    assert_eq!(*seen.lock().unwrap(), Some((Some(9), Some(3))));
}

// B24: nothing a wrapped future sets reaches the caller, whether the caller is `block_on`'s
// future or a task.
#[test]
fn sets_inside_never_reach_the_caller() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        let _tag = TAG.set(1);
        let inner = async {
            drop(TAG.set(2));
            drop(LABEL.set("inner".to_string()));
            tokio::task::yield_now().await;
            (TAG.get(), LABEL.get())
        };
        assert_eq!(
            inner.in_current_context().await,
            (Some(2), Some("inner".to_string()))
        );
        assert_eq!((TAG.get(), LABEL.get()), (Some(1), None));

        let from_task = contextvars::spawn(async {
            let _mine = ID.set(10);
            let seen = async {
                drop(ID.set(11));
                tokio::task::yield_now().await;
                ID.get()
            }
            .with_context(Context::current())
            .await;
            (seen, ID.get(), TAG.get())
        })
        .await
        .unwrap();
        assert_eq!(from_task, (Some(11), Some(10), Some(1)));
        assert_eq!(ID.get(), None);
    });
}

/// A hand-written stream: each item reports `TAG` and bumps `COUNT` in the current context,
/// with a `Pending` before every item.
struct Counter {
    left: u32,
    ready: bool,
    /// `TAG` as each drop saw it.
    dropped: Arc<Mutex<Vec<Option<u32>>>>,
}

impl Stream for Counter {
    type Item = (Option<u32>, u32);

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        if !self.ready {
            self.ready = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.ready = false;
        self.left -= 1;
        let count = COUNT.get();
        drop(COUNT.set(count + 1));
        Poll::Ready(Some((TAG.get(), count)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.left as usize;
        (left, Some(left))
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.dropped.lock().unwrap().push(TAG.get());
    }
}

async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

// B29: a wrapped stream is polled in its context, keeps its sets across items, never leaks
// them to the task polling it, and is dropped inside its context.
#[test]
fn stream_is_polled_in_its_context() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..200u32)
            .map(|i| {
                contextvars::spawn(async move {
                    let dropped = Arc::new(Mutex::new(Vec::new()));
                    let counter = Counter {
                        left: 5,
                        ready: false,
                        dropped: Arc::clone(&dropped),
                    };
                    let mut stream =
                        Box::pin(counter.with_context(Context::new().with_value(&TAG, i)));
                    assert_eq!(stream.size_hint(), (5, Some(5)));
                    let _poller = TAG.set(1_000_000 + i);
                    let mut items = Vec::new();
                    while let Some(item) = next(&mut stream).await {
                        assert_eq!((TAG.get(), COUNT.get()), (Some(1_000_000 + i), 0));
                        tokio::task::yield_now().await;
                        items.push(item);
                    }
                    assert_eq!(stream.context().get(&COUNT), Some(&5));
                    drop(stream);
                    let dropped_in = dropped.lock().unwrap().clone();
                    (items, dropped_in)
                })
            })
            .collect();
        for (i, task) in (0..).zip(tasks) {
            let (items, dropped_in) = task.await.unwrap();
            let expected: Vec<_> = (0..5).map(|n| (Some(i), n)).collect();
            assert_eq!(items, expected);
            assert_eq!(
                dropped_in,
                [Some(i)],
                "the stream was not dropped in its context"
            );
        }
    });
}
