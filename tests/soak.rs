//! Soak: 100,000 requests, 50,000 of them in flight at once, on a 4-worker runtime, each
//! checking after every await that it sees only its own values (SPEC S9).
//!
//! Every request runs in a context of its own (entered through `contextvars::spawn` or
//! `REQUEST.scope`), holds a scope guard and a token across awaits, and spawns children:
//! nested `contextvars::spawn`s, `spawn_blocking`, a `#[preserve_context]` future made in the
//! request and spawned later by a task that has no context, a child aborted with
//! `JoinHandle::abort` while it holds a guard, and a child that panics. Each check counts;
//! the total must be what the workload implies, so a check that silently did not run fails
//! the test as surely as a leaked value. Afterwards plain `tokio::spawn` tasks on every
//! worker, and every runtime thread's own context as the thread stops, must see no value.
//!
//! `examples/soak.rs` runs the same workload with `--requests N` for long runs.

use std::future::Future;
use std::panic::resume_unwind;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::time::Instant;

use contextvars::{Context, context_var, preserve_context};
use tokio::sync::{Semaphore, mpsc, oneshot};

#[context_var]
static REQUEST: u64;

/// `0` is "no tenant"; every request's tenant is 1 or more.
#[context_var]
static TENANT: u64 = 0;

#[context_var]
static STEP: u32;

/// How the soak is run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Config {
    /// Requests in all.
    pub(crate) requests: u64,
    /// Requests in flight at once: a new one starts as one ends.
    pub(crate) concurrency: usize,
    /// Runtime worker threads.
    pub(crate) workers: usize,
}

/// What the soak saw.
#[derive(Debug)]
pub(crate) struct Report {
    /// Requests that ran to completion.
    pub(crate) requests: u64,
    /// Checks made, in requests, their children and the tasks without a context.
    pub(crate) checks: u64,
    /// Checks the workload implies.
    pub(crate) expected_checks: u64,
    /// Checks that saw a value that was not theirs, or not the one they set.
    pub(crate) violations: u64,
    /// The first violation, described.
    pub(crate) first_violation: Option<String>,
    /// Runtime threads (workers and blocking threads) whose own context was checked as they
    /// stopped.
    pub(crate) threads_checked: u64,
    /// Wall-clock seconds of the whole run.
    pub(crate) seconds: f64,
}

#[derive(Default)]
struct Counters {
    checks: AtomicU64,
    violations: AtomicU64,
    first_violation: Mutex<Option<String>>,
    threads_checked: AtomicU64,
}

impl Counters {
    /// Checks that the current context holds exactly these values.
    fn check(&self, at: &str, request: Option<u64>, tenant: u64, step: Option<u32>) {
        self.checks.fetch_add(1, Ordering::Relaxed);
        let seen = (REQUEST.get(), TENANT.get(), STEP.get());
        if seen != (request, tenant, step) {
            self.violation(format!(
                "{at}: saw (request, tenant, step) = {seen:?}, expected {:?}",
                (request, tenant, step)
            ));
        }
    }

    fn violation(&self, what: String) {
        self.violations.fetch_add(1, Ordering::Relaxed);
        let mut first = self
            .first_violation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        first.get_or_insert(what);
    }

    /// A thread outside any task: its own context must be empty.
    fn check_thread(&self) {
        self.threads_checked.fetch_add(1, Ordering::Relaxed);
        let own = Context::current();
        if !own.is_empty() || REQUEST.is_set() || STEP.is_set() || TENANT.is_set() {
            let name = std::thread::current().name().unwrap_or("?").to_string();
            self.violation(format!("thread {name}'s own context holds {own:?}"));
        }
    }
}

/// The payload of the deliberate panics, raised with `resume_unwind` so that no panic hook
/// prints 4,000 messages.
struct Deliberate;

/// Checks, when dropped, that it is dropped in the context it was made for.
struct DropProbe {
    counters: Arc<Counters>,
    request: u64,
    tenant: u64,
    step: u32,
}

impl Drop for DropProbe {
    fn drop(&mut self) {
        self.counters.check(
            "a value dropped with its task",
            Some(self.request),
            self.tenant,
            Some(self.step),
        );
    }
}

fn tenant_of(id: u64) -> u64 {
    id % 97 + 1
}

/// One to three yields, varying with the request and the point in it, so that tasks
/// interleave differently and move between workers.
async fn pause(id: u64, point: u32) {
    let mixed = id
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(point * 7);
    for _ in 0..=(mixed % 3) {
        tokio::task::yield_now().await;
    }
}

type Later = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Made inside a request and spawned later by a task that has no context: it must run in the
/// request's context as it was at the call.
#[preserve_context]
async fn made_in_request(id: u64, counters: Arc<Counters>, done: oneshot::Sender<()>) {
    let tenant = tenant_of(id);
    counters.check("made future", Some(id), tenant, Some(1));
    pause(id, 9).await;
    counters.check("made future after await", Some(id), tenant, Some(1));
    let _ = done.send(());
}

/// Checks that the request itself makes (children included), by which features it uses.
fn checks_of(id: u64) -> u64 {
    let mut checks = 7;
    if id % 5 == 0 {
        checks += 3; // grandchild
    }
    if id % 4 == 0 {
        checks += 3; // spawn_blocking
    }
    if id % 3 == 0 {
        checks += 5; // a future spawned later, and the dispatcher that spawns it
    }
    if id % 7 == 0 {
        checks += 3; // aborted child
    }
    if id % 11 == 0 {
        checks += 3; // panicking child
    }
    checks
}

#[allow(clippy::too_many_lines)] // one request, read top to bottom
async fn request(id: u64, counters: Arc<Counters>, later: mpsc::UnboundedSender<Later>) {
    let c = &counters;
    let tenant = tenant_of(id);
    c.check("start", Some(id), 0, None);
    let tenant_guard = TENANT.scoped(tenant);
    let step = STEP.set(1);
    pause(id, 0).await;
    c.check("after the first await", Some(id), tenant, Some(1));

    // A child: inherits a snapshot, and what it sets stays in it.
    let child = {
        let c = Arc::clone(c);
        contextvars::spawn(async move {
            c.check("child", Some(id), tenant, Some(1));
            let _step = STEP.scoped(2);
            pause(id, 1).await;
            c.check("child after await", Some(id), tenant, Some(2));
            if id % 5 == 0 {
                let grandchild = {
                    let c = Arc::clone(&c);
                    contextvars::spawn(async move {
                        pause(id, 2).await;
                        c.check("grandchild", Some(id), tenant, Some(2));
                        let _ = STEP.set(3);
                        pause(id, 3).await;
                        c.check("grandchild after set", Some(id), tenant, Some(3));
                    })
                };
                grandchild.await.expect("the grandchild does not panic");
                c.check("child after grandchild", Some(id), tenant, Some(2));
            }
        })
    };
    pause(id, 4).await;
    child.await.expect("the child does not panic");
    c.check("after child", Some(id), tenant, Some(1));

    if id % 4 == 0 {
        let blocking = {
            let c = Arc::clone(c);
            contextvars::spawn_blocking(move || {
                c.check("blocking", Some(id), tenant, Some(1));
                let _ = STEP.set(4);
                c.check("blocking after set", Some(id), tenant, Some(4));
            })
        };
        blocking.await.expect("the blocking closure does not panic");
        c.check("after blocking", Some(id), tenant, Some(1));
    }

    if id % 3 == 0 {
        let (done, ran) = oneshot::channel();
        // The context is captured here, at the call; the set below comes too late for it.
        let future = made_in_request(id, Arc::clone(c), done);
        let later_step = STEP.set(6);
        later
            .send(Box::pin(future))
            .expect("the dispatcher runs until the end");
        pause(id, 5).await;
        c.check(
            "while the made future runs elsewhere",
            Some(id),
            tenant,
            Some(6),
        );
        ran.await.expect("the made future ran");
        if STEP.reset(later_step).is_err() {
            c.violation(format!("request {id}: reset refused after an await"));
        }
        c.check("after the made future", Some(id), tenant, Some(1));
    }

    if id % 7 == 0 {
        let (started, has_started) = oneshot::channel();
        let doomed = {
            let c = Arc::clone(c);
            contextvars::spawn(async move {
                let _step = STEP.scoped(7);
                let _probe = DropProbe {
                    counters: Arc::clone(&c),
                    request: id,
                    tenant,
                    step: 7,
                };
                c.check("child to be aborted", Some(id), tenant, Some(7));
                let _ = started.send(());
                std::future::pending::<()>().await;
            })
        };
        has_started.await.expect("the child starts");
        doomed.abort();
        match doomed.await {
            Err(err) if err.is_cancelled() => {}
            other => c.violation(format!(
                "request {id}: the aborted child ended with {other:?}"
            )),
        }
        c.check("after aborting a child", Some(id), tenant, Some(1));
    }

    if id % 11 == 0 {
        let panicking = {
            let c = Arc::clone(c);
            contextvars::spawn(async move {
                let _step = STEP.scoped(8);
                let _probe = DropProbe {
                    counters: Arc::clone(&c),
                    request: id,
                    tenant,
                    step: 8,
                };
                c.check("child about to panic", Some(id), tenant, Some(8));
                pause(id, 6).await;
                resume_unwind(Box::new(Deliberate));
            })
        };
        match panicking.await {
            Err(err) if err.is_panic() => {
                if !err.into_panic().is::<Deliberate>() {
                    c.violation(format!(
                        "request {id}: the child panicked with another payload"
                    ));
                }
            }
            other => c.violation(format!(
                "request {id}: the panicking child ended with {other:?}"
            )),
        }
        c.check("after a child panicked", Some(id), tenant, Some(1));
    }

    if STEP.reset(step).is_err() {
        c.violation(format!(
            "request {id}: reset refused in the context that set it"
        ));
    }
    c.check("end", Some(id), tenant, None);
    drop(tenant_guard);
    c.check("after the guard", Some(id), 0, None);
}

/// A task spawned without a context: it must see nothing, and be refused a `set`.
fn check_plain_task(c: &Counters, at: &str) {
    c.check(at, None, 0, None);
    if !Context::current().is_empty() || STEP.try_set(0).is_ok() {
        c.violation(format!("{at}: a task without a context has one"));
    }
}

/// Runs the soak and reports what it saw.
///
/// # Panics
/// If the runtime cannot be built, or a request task panics (a bug in the workload or the
/// library).
#[must_use]
pub(crate) fn run(config: Config) -> Report {
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let stopping = Arc::clone(&counters);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers)
        // Runtime threads run this as they stop, outside any task: there the thread's own
        // context is visible, and must be empty.
        .on_thread_stop(move || stopping.check_thread())
        .build()
        .expect("a multi-thread runtime");

    let requests = runtime.block_on(async {
        // Spawns, without a context, the futures that requests make and send here.
        let (later, mut to_spawn) = mpsc::unbounded_channel::<Later>();
        let dispatcher = {
            let c = Arc::clone(&counters);
            tokio::spawn(async move {
                while let Some(future) = to_spawn.recv().await {
                    check_plain_task(&c, "dispatcher");
                    tokio::spawn(future);
                }
            })
        };

        let in_flight = Arc::new(Semaphore::new(config.concurrency));
        let (mut handles, mut plain_handles) = (Vec::new(), Vec::new());
        for id in 1..=config.requests {
            let permit = Arc::clone(&in_flight)
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let request = request(id, Arc::clone(&counters), later.clone());
            let task = async move {
                request.await;
                drop(permit);
            };
            // Two ways into a request's context: a context built for it and
            // `contextvars::spawn`, or a plain task that enters it with `scope`.
            if id % 2 == 0 {
                handles.push(
                    Context::new()
                        .with_value(&REQUEST, id)
                        .run(|| contextvars::spawn(task)),
                );
            } else {
                plain_handles.push(tokio::spawn(REQUEST.scope(id, task)));
            }
        }
        drop(later);
        let mut completed = 0;
        for handle in handles {
            handle.await.expect("a request task panicked");
            completed += 1;
        }
        for handle in plain_handles {
            handle.await.expect("a request task panicked");
            completed += 1;
        }
        dispatcher.await.expect("the dispatcher does not panic");

        // Plain tasks on every worker: each blocks until all are running, so they run on
        // distinct workers at once. Spawned from here (not from a worker) they sit in the
        // shared queue that every worker takes from.
        let barrier = Arc::new(Barrier::new(config.workers));
        let plain: Vec<_> = (0..config.workers)
            .map(|_| {
                let (c, barrier) = (Arc::clone(&counters), Arc::clone(&barrier));
                tokio::spawn(async move {
                    check_plain_task(&c, "plain task on a worker");
                    barrier.wait();
                    check_plain_task(&c, "plain task on a worker, after the barrier");
                    let blocking = {
                        let c = Arc::clone(&c);
                        tokio::task::spawn_blocking(move || c.check_thread())
                    };
                    blocking.await.expect("the check does not panic");
                })
            })
            .collect();
        for task in plain {
            task.await.expect("a plain task panicked");
        }
        completed
    });
    drop(runtime);

    let expected_checks =
        (1..=config.requests).map(checks_of).sum::<u64>() + 2 * config.workers as u64;
    Report {
        requests,
        checks: counters.checks.load(Ordering::Relaxed),
        expected_checks,
        violations: counters.violations.load(Ordering::Relaxed),
        first_violation: counters
            .first_violation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(),
        threads_checked: counters.threads_checked.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    }
}

#[test]
fn a_hundred_thousand_requests_fifty_thousand_at_once_see_only_their_own_values() {
    let config = Config {
        requests: 100_000,
        concurrency: 50_000,
        workers: 4,
    };
    let report = run(config);
    eprintln!(
        "soak: {} requests, {} checks, {} violations, {:.1} s",
        report.requests, report.checks, report.violations, report.seconds
    );
    assert_eq!(report.requests, config.requests);
    assert_eq!(
        report.violations, 0,
        "first violation: {:?}",
        report.first_violation
    );
    assert_eq!(
        report.checks, report.expected_checks,
        "some checks did not run"
    );
    // The workers, and at least the blocking threads that ran the last checks.
    assert!(report.threads_checked > config.workers as u64, "{report:?}");
}
