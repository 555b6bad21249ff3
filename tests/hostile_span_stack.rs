//! A hostile look at carried spans (`carry_spans`): many concurrent requests on a
//! multi-thread runtime, each in its own span, with random yields, `select!` losers, `join!`,
//! `gather` dropped mid-flight, detached and aborted tasks, `spawn_blocking` and threads, with
//! the hooks on and off. A recording layer checks what a deploying team would: every event is
//! logged in its own request's span and reads its own request's values, every thread's span
//! stack stays balanced (each exit is of the span entered last), every span closes exactly
//! once and never while someone still holds it, and a worker left idle is in no span. The
//! layer's `on_enter`, `on_exit` and `on_close` read context variables and take snapshots, as a
//! subscriber that stamps spans with the request's values would.

#![cfg(feature = "tracing")]

mod support;

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use contextvars::{Context, FutureExt, context_var};
use support::Rng;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber, info, info_span};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

#[context_var]
static TENANT: u32 = 0;

// ---------------------------------------------------------------------------------------------
// The recording layer.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Logged {
    message: String,
    /// The parent span as `name{fields}`, `None` at the root.
    parent: Option<String>,
}

#[derive(Default)]
struct Records {
    events: Vec<Logged>,
    /// How many times each span (`name{fields}`) closed.
    closes: HashMap<String, usize>,
    /// Exits of a span other than the one the thread entered last.
    violations: Vec<String>,
}

fn records() -> &'static Mutex<Records> {
    static RECORDS: OnceLock<Mutex<Records>> = OnceLock::new();
    RECORDS.get_or_init(|| {
        let subscriber = tracing_subscriber::registry().with(Recorder);
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        Mutex::new(Records::default())
    })
}

fn carry() {
    let _ = records();
    contextvars::tracing::carry_spans();
}

thread_local! {
    /// The spans this thread entered and has not exited, innermost last.
    static STACK: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

struct Recorder;

/// A span's `name{fields}`, in its extensions.
struct Shown(String);

#[derive(Default)]
struct Visitor {
    message: String,
    fields: String,
}

impl Visit for Visitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{}={value:?}", field.name());
        }
    }
}

/// What a subscriber that stamps spans with the request's values does in its callbacks: read
/// a variable, take a snapshot of the context and work in it. Must never panic nor deadlock, wherever the
/// library enters, exits or closes a span.
///
/// Working in the snapshot (`run`) enters the span current there, so it is done only where
/// that does not call back into the layer's `on_enter` again (`scratch`): in `on_close`.
fn probe(scratch: bool) {
    let _ = TENANT.get();
    let mut snapshot = Context::current();
    if scratch {
        snapshot.run(|| drop(TENANT.set(u32::MAX)));
    }
    drop(snapshot);
}

fn shown<S: Subscriber + for<'a> LookupSpan<'a>>(id: &Id, ctx: &LayerContext<'_, S>) -> String {
    ctx.span(id)
        .and_then(|span| span.extensions().get::<Shown>().map(|s| s.0.clone()))
        .unwrap_or_else(|| format!("unknown {id:?}"))
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        probe(false);
        let mut visitor = Visitor::default();
        attrs.record(&mut visitor);
        let span = ctx.span(id).expect("a new span");
        let shown = format!("{}{{{}}}", span.name(), visitor.fields);
        span.extensions_mut().insert(Shown(shown));
    }

    fn on_enter(&self, id: &Id, _ctx: LayerContext<'_, S>) {
        probe(false);
        STACK.with(|stack| stack.borrow_mut().push(id.into_u64()));
    }

    fn on_exit(&self, id: &Id, ctx: LayerContext<'_, S>) {
        probe(false);
        let top = STACK.with(|stack| {
            let mut stack = stack.borrow_mut();
            let top = stack.last().copied();
            if top == Some(id.into_u64()) {
                stack.pop();
            } else if let Some(at) = stack.iter().rposition(|&entered| entered == id.into_u64()) {
                stack.remove(at);
            }
            top
        });
        if top != Some(id.into_u64()) {
            let message = format!(
                "{:?}: exit of {} while the last entered is {:?}",
                std::thread::current().name(),
                shown(id, &ctx),
                top.map(|top| shown(&Id::from_u64(top), &ctx)),
            );
            records().lock().unwrap().violations.push(message);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: LayerContext<'_, S>) {
        let mut visitor = Visitor::default();
        event.record(&mut visitor);
        let parent = ctx
            .event_span(event)
            .map(|span| span.extensions().get::<Shown>().map(|s| s.0.clone()))
            .map(Option::unwrap_or_default);
        records().lock().unwrap().events.push(Logged {
            message: visitor.message,
            parent,
        });
    }

    fn on_close(&self, id: Id, ctx: LayerContext<'_, S>) {
        probe(true);
        let shown = shown(&id, &ctx);
        *records().lock().unwrap().closes.entry(shown).or_default() += 1;
    }
}

/// The events whose message starts with `prefix`.
fn events(prefix: &str) -> Vec<Logged> {
    records()
        .lock()
        .unwrap()
        .events
        .iter()
        .filter(|event| event.message.starts_with(prefix))
        .cloned()
        .collect()
}

fn closes(span: &str) -> usize {
    records()
        .lock()
        .unwrap()
        .closes
        .get(span)
        .copied()
        .unwrap_or(0)
}

fn violations() -> Vec<String> {
    records().lock().unwrap().violations.clone()
}

/// Waits (at most 3 s) until every span in `spans` has closed at least once.
async fn until_closed(spans: &[String]) {
    for _ in 0..600 {
        if spans.iter().all(|span| closes(span) > 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Checks every event of one storm: logged in the span of the request its message names
/// (`<prefix> n=<n> …`), reading that request's `TENANT` (`tenant=<n>`).
fn check_storm(prefix: &str, span: &str, requests: u32) -> usize {
    let logged = events(prefix);
    for event in &logged {
        let n: u32 = event
            .message
            .split_whitespace()
            .find_map(|word| word.strip_prefix("n="))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no n= in {event:?}"));
        assert!(n < requests);
        assert_eq!(
            event.parent.as_deref(),
            Some(format!("{span}{{n={n}}}").as_str()),
            "{event:?}"
        );
        assert!(
            event.message.ends_with(&format!("tenant={n}")),
            "read another request's value: {event:?}"
        );
    }
    logged.len()
}

async fn yields(count: u64) {
    for _ in 0..count {
        tokio::task::yield_now().await;
    }
}

/// Logs from its `Drop`, with the request's value read there.
struct LogOnDrop {
    prefix: &'static str,
    n: u32,
    what: &'static str,
}

impl Drop for LogOnDrop {
    fn drop(&mut self) {
        info!(
            "{} n={} dropped {} tenant={}",
            self.prefix,
            self.n,
            self.what,
            TENANT.get()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Without the hooks: the spawn helpers.
// ---------------------------------------------------------------------------------------------

/// One request's work in its own task: `select!` against a wrapped future that loses and is
/// dropped, `join!`, a `gather` dropped mid-flight, a detached task, `spawn_blocking`, a
/// thread, an awaited child; every step after random yields. `abortable` requests then wait
/// forever, to be aborted.
async fn storm_request(prefix: &'static str, n: u32, abortable: bool) {
    let mut rng = Rng::new(u64::from(n) + 1);
    let t = || TENANT.get();
    info!("{prefix} n={n} start tenant={}", t());
    let loser = async move {
        let _drop = LogOnDrop {
            prefix,
            n,
            what: "select loser",
        };
        tokio::task::yield_now().await;
        info!("{prefix} n={n} select loser ran tenant={}", TENANT.get());
        std::future::pending::<()>().await;
    }
    .in_current_context();
    tokio::select! {
        () = loser => unreachable!(),
        () = yields(rng.below(4) + 1) => {}
    }
    info!("{prefix} n={n} after select tenant={}", t());
    let (a, b) = (rng.below(3), rng.below(3));
    tokio::join!(
        async move {
            yields(a).await;
            info!("{prefix} n={n} join a tenant={}", TENANT.get());
        },
        async move {
            yields(b).await;
            info!("{prefix} n={n} join b tenant={}", TENANT.get());
        }
    );
    let gathered = contextvars::gather([
        Box::pin(async move {
            let _drop = LogOnDrop {
                prefix,
                n,
                what: "gather branch",
            };
            info!("{prefix} n={n} gather pending tenant={}", TENANT.get());
            std::future::pending::<()>().await;
        }) as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
        Box::pin(async move {
            tokio::task::yield_now().await;
            info!("{prefix} n={n} gather done tenant={}", TENANT.get());
        }),
    ]);
    tokio::select! {
        _ = gathered => unreachable!(),
        () = yields(rng.below(3) + 2) => {}
    }
    let detached = rng.below(3);
    drop(contextvars::spawn(async move {
        yields(detached).await;
        info!("{prefix} n={n} detached tenant={}", TENANT.get());
    }));
    contextvars::spawn_blocking(move || {
        info!("{prefix} n={n} blocking tenant={}", TENANT.get());
    })
    .await
    .unwrap();
    contextvars::thread::spawn(move || info!("{prefix} n={n} thread tenant={}", TENANT.get()))
        .join()
        .unwrap();
    let child_yields = rng.below(3);
    contextvars::spawn(async move {
        let _drop = LogOnDrop {
            prefix,
            n,
            what: "child",
        };
        yields(child_yields).await;
        info!("{prefix} n={n} child tenant={}", TENANT.get());
    })
    .await
    .unwrap();
    info!("{prefix} n={n} end tenant={}", t());
    if abortable {
        let _drop = LogOnDrop {
            prefix,
            n,
            what: "aborted",
        };
        std::future::pending::<()>().await;
    }
}

/// Under a storm of concurrent requests (select losers, join, gather dropped mid-flight,
/// detached, blocking, thread and aborted tasks), every event is in its own request's span
/// with its own values, every span stack stays balanced, every span closes exactly once and
/// not while the test still holds it, and idle workers are in no span.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_of_requests_keeps_every_event_in_its_own_span() {
    const REQUESTS: u32 = 120;
    carry();
    let mut tasks = Vec::new();
    let mut kept = Vec::new();
    for n in 0..REQUESTS {
        let span = info_span!("storm", n);
        if n % 4 == 0 {
            kept.push(span.clone());
        }
        let task = Context::new().run(|| {
            let _ = TENANT.set(n);
            span.in_scope(|| contextvars::spawn(storm_request("storm", n, n % 3 == 0)))
        });
        tasks.push(task);
    }
    // Abort the waiting ones once they got there, the others whenever they are.
    let mut rng = Rng::new(7);
    for (n, task) in (0..REQUESTS).zip(&tasks) {
        if n % 3 == 0 {
            continue;
        }
        if rng.below(5) == 0 {
            tokio::time::sleep(Duration::from_micros(rng.below(500))).await;
            task.abort();
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for (n, task) in (0..REQUESTS).zip(&tasks) {
        if n % 3 == 0 {
            task.abort();
        }
    }
    for task in tasks {
        match task.await {
            Ok(()) => {}
            Err(err) => assert!(err.is_cancelled(), "{err}"),
        }
    }
    let spans: Vec<String> = (0..REQUESTS).map(|n| format!("storm{{n={n}}}")).collect();
    // The spans the test still holds are open, whatever the tasks did.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(kept.len(), spans.iter().step_by(4).count());
    for span in spans.iter().step_by(4) {
        assert_eq!(closes(span), 0, "{span} closed while held");
    }
    drop(kept);
    until_closed(&spans).await;
    for span in &spans {
        assert_eq!(closes(span), 1, "{span}");
    }
    // Idle workers are in no span.
    let idle: Vec<_> = (0..64)
        .map(|i| tokio::spawn(async move { info!("storm-idle {i}") }))
        .collect();
    for task in idle {
        task.await.unwrap();
    }
    assert!(
        events("storm-idle").iter().all(|e| e.parent.is_none()),
        "{:?}",
        events("storm-idle")
    );
    let checked = check_storm("storm ", "storm", REQUESTS);
    assert!(checked > REQUESTS as usize * 5, "{checked}");
    // Every aborted waiting request dropped its value inside its span.
    for n in (0..REQUESTS).step_by(3) {
        let dropped = events(&format!("storm n={n} dropped aborted"));
        let ended = events(&format!("storm n={n} end")).len();
        assert_eq!(dropped.len(), ended, "n={n}");
    }
    assert_eq!(violations(), Vec::<String>::new());
}

/// A value whose `Drop` sets and reads variables, held by a task that carries a span and is
/// aborted: the drop runs inside the span and the task's context, its set stays there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_that_sets_variables_in_an_aborted_span_task_stays_inside() {
    struct SetsOnDrop(u32);
    impl Drop for SetsOnDrop {
        fn drop(&mut self) {
            let before = TENANT.get();
            let _token = TENANT.set(self.0 + 1000);
            info!("setdrop n={} read={before} tenant={}", self.0, TENANT.get());
        }
    }
    carry();
    let mut tasks = Vec::new();
    for n in 0..32 {
        let task = Context::new().run(|| {
            let _ = TENANT.set(n);
            info_span!("setdrop", n).in_scope(|| {
                let value = SetsOnDrop(n);
                contextvars::spawn(async move {
                    let _value = value;
                    std::future::pending::<()>().await;
                })
            })
        });
        tasks.push(task);
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        assert!(task.await.unwrap_err().is_cancelled());
    }
    assert_eq!(TENANT.get(), 0);
    let logged = events("setdrop ");
    assert_eq!(logged.len(), 32);
    for event in logged {
        let n: u32 = event.message["setdrop n=".len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(event.parent, Some(format!("setdrop{{n={n}}}")));
        assert!(
            event
                .message
                .ends_with(&format!("read={n} tenant={}", n + 1000)),
            "{event:?}"
        );
    }
    assert_eq!(violations(), Vec::<String>::new());
}

/// A wrapped future made in one span and dropped by `select!` in a task of another span is
/// dropped inside its own span and context, and the winner keeps logging in its own span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_select_loser_made_in_another_span_is_dropped_in_its_own() {
    carry();
    let loser = Context::new().run(|| {
        let _ = TENANT.set(1);
        info_span!("loser", n = 1).in_scope(|| {
            let value = LogOnDrop {
                prefix: "loser",
                n: 1,
                what: "value",
            };
            async move {
                let _value = value;
                info!("loser n=1 polled tenant={}", TENANT.get());
                std::future::pending::<()>().await;
            }
            .in_current_context()
        })
    });
    let winner = Context::new().run(|| {
        let _ = TENANT.set(2);
        info_span!("winner", n = 2).in_scope(|| {
            contextvars::spawn(async move {
                tokio::select! {
                    () = loser => unreachable!(),
                    () = yields(3) => {}
                }
                info!("winner n=2 after tenant={}", TENANT.get());
            })
        })
    });
    winner.await.unwrap();
    let loser = events("loser ");
    assert_eq!(loser.len(), 2, "{loser:?}");
    for event in loser {
        assert_eq!(event.parent.as_deref(), Some("loser{n=1}"), "{event:?}");
        assert!(event.message.ends_with("tenant=1"), "{event:?}");
    }
    let winner = events("winner ");
    assert_eq!(winner.len(), 1);
    assert_eq!(winner[0].parent.as_deref(), Some("winner{n=2}"));
    assert!(winner[0].message.ends_with("tenant=2"));
    assert_eq!(violations(), Vec::<String>::new());
}

/// A task in a span that panics mid-poll leaves the worker in no span, the span closes once,
/// and the task's value is dropped inside the span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_span_task_leaves_its_worker_in_no_span() {
    carry();
    let mut tasks = Vec::new();
    for n in 0..16_u32 {
        tasks.push(Context::new().run(|| {
            let _ = TENANT.set(n);
            info_span!("panics", n).in_scope(|| {
                let value = LogOnDrop {
                    prefix: "panics",
                    n,
                    what: "value",
                };
                contextvars::spawn(async move {
                    let _value = value;
                    tokio::task::yield_now().await;
                    panic!("request {n} fails");
                })
            })
        }));
    }
    for task in tasks {
        assert!(task.await.unwrap_err().is_panic());
    }
    for i in 0..32 {
        tokio::spawn(async move { info!("panics-idle {i}") })
            .await
            .unwrap();
    }
    assert!(events("panics-idle").iter().all(|e| e.parent.is_none()));
    assert_eq!(check_storm("panics ", "panics", 16), 16);
    let spans: Vec<String> = (0..16).map(|n| format!("panics{{n={n}}}")).collect();
    until_closed(&spans).await;
    for span in &spans {
        assert_eq!(closes(span), 1, "{span}");
    }
    assert_eq!(violations(), Vec::<String>::new());
}

/// Blocking jobs and threads that carry a span and panic leave their thread in no span (the
/// next job on the same pool logs at the root), and their spans close once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_blocking_jobs_and_threads_leave_their_thread_in_no_span() {
    carry();
    let mut jobs = Vec::new();
    let mut threads = Vec::new();
    for n in 0..24_u32 {
        let (job, thread) = Context::new().run(|| {
            let _ = TENANT.set(n);
            info_span!("blockpanic", n).in_scope(|| {
                let job = contextvars::spawn_blocking(move || {
                    info!("blockpanic n={n} job tenant={}", TENANT.get());
                    assert!(n % 2 != 0, "job {n} fails");
                });
                let thread = contextvars::thread::spawn(move || {
                    info!("blockpanic n={n} thread tenant={}", TENANT.get());
                    assert!(n % 2 != 0, "thread {n} fails");
                });
                (job, thread)
            })
        });
        jobs.push(job);
        threads.push(thread);
    }
    for (n, job) in (0..24).zip(jobs) {
        assert_eq!(job.await.is_err(), n % 2 == 0);
    }
    for (n, thread) in (0..24).zip(threads) {
        assert_eq!(thread.join().is_err(), n % 2 == 0);
    }
    let later: Vec<_> = (0..32)
        .map(|i| tokio::task::spawn_blocking(move || info!("blockpanic-idle {i}")))
        .collect();
    for job in later {
        job.await.unwrap();
    }
    assert!(events("blockpanic-idle").iter().all(|e| e.parent.is_none()));
    assert_eq!(check_storm("blockpanic ", "blockpanic", 24), 48);
    let spans: Vec<String> = (0..24).map(|n| format!("blockpanic{{n={n}}}")).collect();
    until_closed(&spans).await;
    for span in &spans {
        assert_eq!(closes(span), 1, "{span}");
    }
    assert_eq!(violations(), Vec::<String>::new());
}

/// A `gather` whose branch panics: the panic reaches the caller, the other branches are
/// dropped inside their span with their values, and the worker is left in no span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gather_branch_that_panics_drops_the_others_inside_their_span() {
    carry();
    let task = Context::new().run(|| {
        let _ = TENANT.set(3);
        info_span!("gatherpanic", n = 3).in_scope(|| {
            let value = LogOnDrop {
                prefix: "gatherpanic",
                n: 3,
                what: "waiting branch",
            };
            let gathered = contextvars::gather([
                Box::pin(async move {
                    let _value = value;
                    std::future::pending::<()>().await;
                }) as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
                Box::pin(async {
                    tokio::task::yield_now().await;
                    info!("gatherpanic n=3 panics tenant={}", TENANT.get());
                    panic!("a branch fails");
                }),
            ]);
            contextvars::spawn(gathered)
        })
    });
    assert!(task.await.unwrap_err().is_panic());
    for i in 0..16 {
        tokio::spawn(async move { info!("gatherpanic-idle {i}") })
            .await
            .unwrap();
    }
    assert!(
        events("gatherpanic-idle")
            .iter()
            .all(|e| e.parent.is_none())
    );
    assert_eq!(check_storm("gatherpanic ", "gatherpanic", 4), 2);
    until_closed(&["gatherpanic{n=3}".to_string()]).await;
    assert_eq!(closes("gatherpanic{n=3}"), 1);
    assert_eq!(violations(), Vec::<String>::new());
}

/// A `LocalSet` dropped with `spawn_local` tasks still pending, each carrying its span: each
/// task is dropped inside its span with its values, and each span closes once.
#[test]
fn a_local_set_dropped_with_pending_span_tasks_drops_them_inside_their_span() {
    carry();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    runtime.block_on(local.run_until(async {
        for n in 0..8_u32 {
            Context::new().run(|| {
                let _ = TENANT.set(n);
                info_span!("localdrop", n).in_scope(|| {
                    let value = LogOnDrop {
                        prefix: "localdrop",
                        n,
                        what: "pending",
                    };
                    drop(contextvars::spawn_local(async move {
                        let _value = value;
                        info!("localdrop n={n} polled tenant={}", TENANT.get());
                        std::future::pending::<()>().await;
                    }));
                });
            });
        }
        // Until every task got its first poll.
        for _ in 0..1000 {
            if events("localdrop ").len() == 8 {
                break;
            }
            tokio::task::yield_now().await;
        }
    }));
    drop(local);
    drop(runtime);
    assert_eq!(check_storm("localdrop ", "localdrop", 8), 16);
    for n in 0..8 {
        assert_eq!(closes(&format!("localdrop{{n={n}}}")), 1, "n={n}");
    }
    assert_eq!(violations(), Vec::<String>::new());
}

/// `run_in_executor` with an executor that drops the job unrun (a full pool): the span the
/// job carried is released, closed exactly once, and the caller hears that the job is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_dropped_unrun_by_its_executor_releases_its_span() {
    carry();
    let job = info_span!("unrun", n = 1)
        .in_scope(|| contextvars::run_in_executor(drop, || info!("unrun n=1 ran tenant=0")));
    assert!(job.await.unwrap_err().is_dropped());
    assert!(events("unrun ").is_empty());
    until_closed(&["unrun{n=1}".to_string()]).await;
    assert_eq!(closes("unrun{n=1}"), 1);
    assert_eq!(violations(), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// With the hooks: plain `tokio::spawn`.
// ---------------------------------------------------------------------------------------------

#[cfg(all(feature = "hooks", tokio_unstable))]
mod hooks {
    use super::*;

    fn runtime(workers: usize) -> tokio::runtime::Runtime {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        contextvars::hooks::install(builder.worker_threads(workers).enable_all())
            .build()
            .unwrap()
    }

    /// One hooked request: plain `tokio::spawn` children (one detached, one aborted), a
    /// `JoinSet` shut down mid-flight, a `select!` loser, random yields.
    async fn hooked_request(n: u32) {
        let prefix = "hooked";
        let mut rng = Rng::new(u64::from(n) + 100);
        info!("{prefix} n={n} start tenant={}", TENANT.get());
        let value = LogOnDrop {
            prefix,
            n,
            what: "select loser",
        };
        let loser = async move {
            let _drop = value;
            tokio::task::yield_now().await;
            std::future::pending::<()>().await;
        };
        tokio::select! {
            () = loser => unreachable!(),
            () = yields(rng.below(3) + 1) => {}
        }
        let detached = rng.below(3);
        drop(tokio::spawn(async move {
            yields(detached).await;
            info!("{prefix} n={n} detached tenant={}", TENANT.get());
        }));
        // Made before the spawn: a task aborted before its first poll drops it too.
        let value = LogOnDrop {
            prefix,
            n,
            what: "aborted child",
        };
        let waiting = tokio::spawn(async move {
            let _drop = value;
            info!("{prefix} n={n} child waits tenant={}", TENANT.get());
            std::future::pending::<()>().await;
        });
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..2 {
            let value = LogOnDrop {
                prefix,
                n,
                what: "joinset",
            };
            set.spawn(async move {
                let _drop = value;
                tokio::task::yield_now().await;
                std::future::pending::<()>().await;
            });
        }
        yields(rng.below(4) + 1).await;
        waiting.abort();
        assert!(waiting.await.unwrap_err().is_cancelled());
        set.shutdown().await;
        info!("{prefix} n={n} end tenant={}", TENANT.get());
    }

    /// Under the hooks, a storm of plain `tokio::spawn` requests (select losers, detached,
    /// aborted and `JoinSet` children) logs every event in its own request's span with its
    /// own values, keeps every span stack balanced, closes every span exactly once, and
    /// leaves idle workers in no span.
    #[test]
    fn a_storm_of_hooked_tasks_keeps_every_event_in_its_own_span() {
        const REQUESTS: u32 = 100;
        carry();
        let runtime = runtime(4);
        runtime.block_on(async {
            let mut tasks = Vec::new();
            for n in 0..REQUESTS {
                let task = Context::new().run(|| {
                    let _ = TENANT.set(n);
                    info_span!("hooked", n).in_scope(|| tokio::spawn(hooked_request(n)))
                });
                tasks.push(task);
            }
            for task in tasks {
                task.await.unwrap();
            }
            let spans: Vec<String> = (0..REQUESTS).map(|n| format!("hooked{{n={n}}}")).collect();
            until_closed(&spans).await;
            for span in &spans {
                assert_eq!(closes(span), 1, "{span}");
            }
            let idle: Vec<_> = (0..64)
                .map(|i| tokio::spawn(async move { info!("hooked-idle {i}") }))
                .collect();
            for task in idle {
                task.await.unwrap();
            }
        });
        assert!(
            events("hooked-idle").iter().all(|e| e.parent.is_none()),
            "{:?}",
            events("hooked-idle")
        );
        let checked = check_storm("hooked ", "hooked", REQUESTS);
        assert!(checked >= REQUESTS as usize * 6, "{checked}");
        for n in 0..REQUESTS {
            for what in ["select loser", "aborted child", "joinset"] {
                let dropped = events(&format!("hooked n={n} dropped {what}"));
                assert!(!dropped.is_empty(), "n={n} {what}");
            }
        }
        assert_eq!(violations(), Vec::<String>::new());
    }

    /// Under the hooks, an aborted plain task is dropped inside its spawner's span, as
    /// `.in_current_span()` would drop it, and the span then closes once.
    #[test]
    fn an_aborted_hooked_task_is_dropped_inside_its_spawners_span() {
        carry();
        let runtime = runtime(2);
        runtime.block_on(async {
            let task = Context::new().run(|| {
                let _ = TENANT.set(5);
                info_span!("hookabort", n = 5).in_scope(|| {
                    let value = LogOnDrop {
                        prefix: "hookabort",
                        n: 5,
                        what: "value",
                    };
                    tokio::spawn(async move {
                        let _value = value;
                        std::future::pending::<()>().await;
                    })
                })
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
            task.abort();
            assert!(task.await.unwrap_err().is_cancelled());
            until_closed(&["hookabort{n=5}".to_string()]).await;
        });
        assert_eq!(check_storm("hookabort ", "hookabort", 6), 1);
        assert_eq!(closes("hookabort{n=5}"), 1);
        assert_eq!(violations(), Vec::<String>::new());
    }

    /// A hooked runtime shut down with tasks still pending, each in its spawner's span: the
    /// spans close once (nothing keeps them open forever), and no span stack is left
    /// unbalanced. What the drops at shutdown see is not promised (no hook runs there).
    #[test]
    fn shutting_down_a_hooked_runtime_with_pending_span_tasks_closes_their_spans() {
        carry();
        let runtime = runtime(2);
        runtime.block_on(async {
            for n in 0..16_u32 {
                Context::new().run(|| {
                    let _ = TENANT.set(n);
                    info_span!("shutdown", n).in_scope(|| {
                        drop(tokio::spawn(async move {
                            info!("shutdown n={n} polled tenant={}", TENANT.get());
                            std::future::pending::<()>().await;
                        }));
                    });
                });
            }
            for _ in 0..600 {
                if events("shutdown ").len() == 16 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        drop(runtime);
        assert_eq!(check_storm("shutdown ", "shutdown", 16), 16);
        for n in 0..16 {
            assert_eq!(closes(&format!("shutdown{{n={n}}}")), 1, "n={n}");
        }
        assert_eq!(violations(), Vec::<String>::new());
    }

    /// `block_in_place` inside a hooked task that carries its spawner's span, while other
    /// span tasks run: the blocking section and what follows log in the task's span, other
    /// tasks in theirs, and every span stack stays balanced.
    #[test]
    fn block_in_place_in_a_hooked_span_task_keeps_spans_apart() {
        carry();
        let runtime = runtime(2);
        runtime.block_on(async {
            let mut tasks = Vec::new();
            for n in 0..24_u32 {
                tasks.push(Context::new().run(|| {
                    let _ = TENANT.set(n);
                    info_span!("inplace", n).in_scope(|| {
                        tokio::spawn(async move {
                            tokio::task::yield_now().await;
                            if n % 2 == 0 {
                                tokio::task::block_in_place(|| {
                                    std::thread::sleep(Duration::from_millis(2));
                                    info!("inplace n={n} blocking tenant={}", TENANT.get());
                                });
                            }
                            tokio::task::yield_now().await;
                            info!("inplace n={n} after tenant={}", TENANT.get());
                        })
                    })
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
            for i in 0..32 {
                tokio::spawn(async move { info!("inplace-idle {i}") })
                    .await
                    .unwrap();
            }
        });
        assert!(events("inplace-idle").iter().all(|e| e.parent.is_none()));
        assert_eq!(check_storm("inplace ", "inplace", 24), 36);
        assert_eq!(violations(), Vec::<String>::new());
    }

    /// Under the hooks, a task spawned with `Handle::spawn` from a plain thread inside a span
    /// runs in that span with that thread's values, and the span closes once when it ends.
    #[test]
    fn a_handle_spawn_from_a_plain_thread_runs_in_the_threads_span() {
        carry();
        let runtime = runtime(2);
        let handle = runtime.handle().clone();
        let tasks: Vec<_> = (0..8_u32)
            .map(|n| {
                let handle = handle.clone();
                std::thread::spawn(move || {
                    let _ = TENANT.set(n);
                    info_span!("handle", n).in_scope(|| {
                        handle.spawn(async move {
                            tokio::task::yield_now().await;
                            info!("handle n={n} task tenant={}", TENANT.get());
                        })
                    })
                })
                .join()
                .unwrap()
            })
            .collect();
        runtime.block_on(async {
            for task in tasks {
                task.await.unwrap();
            }
            let spans: Vec<String> = (0..8).map(|n| format!("handle{{n={n}}}")).collect();
            until_closed(&spans).await;
        });
        assert_eq!(check_storm("handle ", "handle", 8), 8);
        for n in 0..8 {
            assert_eq!(closes(&format!("handle{{n={n}}}")), 1, "n={n}");
        }
        assert_eq!(violations(), Vec::<String>::new());
    }
}
