//! `contextvars::run_in_executor`: a closure runs on any thread pool in a snapshot of the
//! caller's context, and its result comes back as a future. A panic or a job the pool drops
//! gives an error, never a future that waits forever.

use std::panic;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use contextvars::{Job, context_var, run_in_executor};

#[context_var]
static REQUEST: u64;

#[context_var]
static TRAIL: Vec<&str> = Vec::new();

/// A fixed pool of std threads sharing one queue: what a user writes by hand, or gets from
/// `threadpool`, `rayon` and friends.
struct Pool {
    queue: Option<mpsc::Sender<Job>>,
    workers: Vec<thread::JoinHandle<()>>,
}

impl Pool {
    fn new(size: usize) -> Pool {
        let (queue, jobs) = mpsc::channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        let workers = (0..size)
            .map(|_| {
                let jobs = Arc::clone(&jobs);
                thread::spawn(move || {
                    loop {
                        let job = jobs.lock().unwrap().recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => break, // the pool is shut down
                        }
                    }
                })
            })
            .collect();
        Pool {
            queue: Some(queue),
            workers,
        }
    }

    fn execute(&self, job: Job) {
        self.queue.as_ref().unwrap().send(job).unwrap();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.queue.take();
        for worker in self.workers.drain(..) {
            worker.join().unwrap();
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn many_concurrent_calls_each_see_their_own_context_on_a_shared_pool() {
    let pool = Arc::new(Pool::new(3));
    runtime().block_on(async {
        let requests = (0..500u64).map(|id| {
            let pool = Arc::clone(&pool);
            contextvars::spawn(async move {
                let _request = REQUEST.scoped(id);
                tokio::task::yield_now().await;
                let seen = run_in_executor(
                    |job| pool.execute(job),
                    move || {
                        // Slow enough that jobs of other requests run on the same workers.
                        thread::sleep(Duration::from_micros(50 * (id % 3)));
                        (REQUEST.get(), thread::current().id())
                    },
                )
                .await
                .unwrap();
                assert_eq!(seen.0, Some(id), "request {id} saw another request's value");
                assert_eq!(REQUEST.get(), Some(id));
                seen.1
            })
        });
        let mut workers = Vec::new();
        for request in requests.collect::<Vec<_>>() {
            workers.push(request.await.unwrap());
        }
        workers.sort_unstable_by_key(|id| format!("{id:?}"));
        workers.dedup();
        assert!(workers.len() > 1, "the jobs ran on one worker only");
    });
}

#[test]
fn the_snapshot_is_taken_at_the_call_and_sets_in_the_job_stay_in_the_job() {
    let pool = Pool::new(1);
    // The root future of `block_on` runs in the thread's own context.
    runtime().block_on(async move {
        let _trail = TRAIL.scoped(vec!["caller"]);
        let first = run_in_executor(
            |job| pool.execute(job),
            || {
                let mut trail = TRAIL.get();
                trail.push("job");
                let _ = TRAIL.set(trail.clone());
                let _ = REQUEST.set(1);
                trail
            },
        );
        // Set after the call: the job's snapshot was already taken.
        let _late = REQUEST.scoped(99);
        assert_eq!(first.await.unwrap(), ["caller", "job"]);
        assert_eq!(TRAIL.get(), ["caller"]);
        assert_eq!(REQUEST.get(), Some(99));
        // The same worker, next job, plain context: nothing of the first job is left.
        let next = run_in_executor(|job| pool.execute(job), || (TRAIL.get(), REQUEST.get()));
        assert_eq!(next.await.unwrap(), (vec!["caller"], Some(99)));
    });
}

#[test]
fn a_job_the_executor_drops_resolves_to_an_error() {
    runtime().block_on(async {
        // Dropped by `submit` itself.
        let err = run_in_executor(drop, || 1).await.unwrap_err();
        assert!(err.is_dropped() && !err.is_panic());
        assert!(err.to_string().contains("dropped the job"), "{err}");

        // Dropped later, on another thread, while the caller is waiting: it wakes up.
        let (queue, jobs) = mpsc::channel::<Job>();
        let pending = run_in_executor(move |job| queue.send(job).unwrap(), || 2);
        let shutdown = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            drop(jobs); // the queue goes away with the job in it
        });
        let err = tokio::time::timeout(Duration::from_secs(10), pending)
            .await
            .expect("a dropped job must not leave the future waiting")
            .unwrap_err();
        assert!(err.is_dropped());
        assert!(err.try_into_panic().is_err());
        shutdown.join().unwrap();
    });
}

#[test]
fn a_panic_in_the_job_resolves_to_an_error_and_the_worker_lives_on() {
    let pool = Pool::new(1);
    runtime().block_on(async {
        let err = run_in_executor(
            |job| pool.execute(job),
            || -> u8 { panic!("boom in the pool") },
        )
        .await
        .unwrap_err();
        assert!(err.is_panic() && !err.is_dropped());
        assert_eq!(err.to_string(), "the job panicked: boom in the pool");
        let payload = err.into_panic();
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom in the pool"));

        // Re-raised in the caller, as the docs show.
        let again = run_in_executor(|job| pool.execute(job), || -> u8 { panic!("again") });
        let caught = tokio::spawn(async move {
            match again.await {
                Ok(v) => v,
                Err(err) => panic::resume_unwind(err.into_panic()),
            }
        })
        .await
        .unwrap_err();
        assert!(caught.is_panic());

        // The worker caught the panic and runs the next job, in its caller's context.
        let _request = REQUEST.scoped(5);
        let next = run_in_executor(|job| pool.execute(job), || REQUEST.get());
        assert_eq!(next.await.unwrap(), Some(5));
    });
}

#[test]
fn a_job_run_inside_submit_is_ready_at_once() {
    let _request = REQUEST.scoped(3);
    let ready = run_in_executor(|job| job(), || REQUEST.get().map(|r| r * 2));
    // Any executor can await it; here a bare-bones one, no runtime.
    let value = futures_lite_block_on(ready).unwrap();
    assert_eq!(value, Some(6));
}

/// Polls once with a no-op waker: enough for a future that is already complete.
fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("the job ran inside `submit`: it must be ready"),
    }
}
