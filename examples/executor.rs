//! CPU-bound work on a thread pool, awaited from async request handlers: Python's
//! `loop.run_in_executor(pool, copy_context().run, work)`, in one call.
//!
//! `contextvars::run_in_executor(submit, work)` hands the pool a job that runs `work` in a
//! snapshot of the caller's context and returns a future of the result. `submit` is how
//! your pool takes a boxed job: `|job| pool.execute(job)` here, `|job| rayon::spawn(job)`
//! with rayon. A panic in the job, or a job the pool drops at shutdown, comes back as an
//! error instead of a lost worker or a future that never resolves.
//!
//! Run with `cargo run --example executor`.

use std::panic;
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use contextvars::{Job, context_var, run_in_executor};

#[context_var]
static REQUEST_ID: u64;

#[context_var]
static TENANT: &str = "none";

/// A fixed pool of worker threads sharing one queue, started before any request.
struct Pool {
    queue: mpsc::Sender<Job>,
}

impl Pool {
    fn new(workers: usize) -> Pool {
        let (queue, jobs) = mpsc::channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        for _ in 0..workers {
            let jobs = Arc::clone(&jobs);
            thread::spawn(move || {
                while let Ok(job) = jobs.lock().expect("no job panics holding it").recv() {
                    job();
                }
            });
        }
        Pool { queue }
    }

    fn execute(&self, job: Job) {
        // A send fails only once every worker is gone: the job is dropped, and the caller's
        // future resolves to `JobError::is_dropped`.
        let _ = self.queue.send(job);
    }
}

/// Deep in the stack, on a pool thread: the request's values are there.
fn render_report(rows: u64) -> String {
    let checksum = (0..rows).fold(0u64, |acc, row| acc.wrapping_mul(31).wrapping_add(row));
    format!(
        "tenant {} request {}: {rows} rows, checksum {checksum:x}",
        TENANT.get(),
        REQUEST_ID.get().unwrap_or_default(),
    )
}

async fn handle(pool: Arc<Pool>, request: u64, tenant: &'static str) -> String {
    let _request = REQUEST_ID.scoped(request);
    let _tenant = TENANT.scoped(tenant);
    let report = run_in_executor(
        |job| pool.execute(job),
        move || render_report(request * 1000),
    );
    report
        .await
        .expect("the report job neither panicked nor was dropped")
}

fn main() {
    let pool = Arc::new(Pool::new(2));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let requests = [(1, "acme"), (2, "globex"), (3, "initech"), (4, "acme")]
            .map(|(id, tenant)| contextvars::spawn(handle(Arc::clone(&pool), id, tenant)));
        for request in requests {
            println!("{}", request.await.expect("the handler finished"));
        }

        // A panic on the pool comes back to the caller as an error; the worker lives on.
        // The panic is provoked on purpose, so while it happens a panic hook prints one line
        // instead of the default hook's message (and backtrace, with RUST_BACKTRACE=1).
        let default_hook = panic::take_hook();
        panic::set_hook(Box::new(|info| {
            let location = info.location().map(ToString::to_string).unwrap_or_default();
            eprintln!("(a pool worker panicked on purpose at {location})");
        }));
        let failed = run_in_executor(|job| pool.execute(job), || -> u64 { panic!("bad row") });
        let err = failed.await.expect_err("the job panicked");
        panic::set_hook(default_hook);
        println!("caught: {err}");

        // Outside any request: the defaults.
        let idle = run_in_executor(|job| pool.execute(job), || render_report(0));
        println!("{}", idle.await.expect("the job ran"));
    });
}
