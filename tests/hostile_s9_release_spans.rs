//! Hostile tests of a context that carries a tracing span (after `carry_spans()`), released
//! from several handles at the same moment on several threads: a clone, a snapshot taken
//! inside it, a future made `in_current_context`, a task spawned with `contextvars::spawn`.
//! Whatever the interleaving, the span closes exactly once, the span's closing code never
//! reads another context's values (a thread's own), every value is dropped inside a context
//! that holds its bindings, and values whose `Drop` panics never abort the process.

#![cfg(feature = "tracing")]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use contextvars::{Context, FutureExt, context_var};
use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// `n` threads meet here, round after round, and leave within a few instructions of each
/// other (see `tests/hostile_core_release_race.rs`); it yields now and then, so that on a
/// loaded machine the others get to arrive.
struct SpinBarrier {
    parties: usize,
    arrived: AtomicUsize,
}

impl SpinBarrier {
    fn new(parties: usize) -> Self {
        SpinBarrier {
            parties,
            arrived: AtomicUsize::new(0),
        }
    }

    fn wait(&self, round: usize) {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let mut spins = 0_u32;
        while self.arrived.load(Ordering::SeqCst) < self.parties * (round + 1) {
            spins += 1;
            if spins % 1_000 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

#[context_var]
static TENANT: u64;

/// What one test's values and spans saw: for each span closed, the `round` field of the span
/// and the `TENANT` read in `on_close`; for each value dropped, its round and the `TENANT`
/// read in its `Drop`.
#[derive(Default)]
struct Seen {
    closes: Vec<(u64, Option<u64>)>,
    drops: Vec<(u64, Option<u64>)>,
}

/// One record per test, by the span's `test` field (tests run on parallel threads).
fn seen(test: &'static str) -> &'static Mutex<Seen> {
    type Records = Vec<(&'static str, &'static Mutex<Seen>)>;
    static ALL: OnceLock<Mutex<Records>> = OnceLock::new();
    let mut all = ALL.get_or_init(|| Mutex::new(Vec::new())).lock().unwrap();
    if let Some((_, record)) = all.iter().find(|(name, _)| *name == test) {
        return record;
    }
    let record: &'static Mutex<Seen> = Box::leak(Box::default());
    all.push((test, record));
    record
}

/// The span's `test` and `round` fields, kept in its extensions.
struct Fields {
    test: String,
    round: u64,
}

#[derive(Default)]
struct Visitor {
    test: String,
    round: u64,
}

impl Visit for Visitor {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "round" {
            self.round = value;
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "test" {
            self.test = value.to_string();
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

/// Records every close of a span named `s9`, with what `TENANT` reads in the closing code.
struct Recorder;

impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let mut visitor = Visitor::default();
        attrs.record(&mut visitor);
        ctx.span(id).unwrap().extensions_mut().insert(Fields {
            test: visitor.test,
            round: visitor.round,
        });
    }

    fn on_close(&self, id: Id, ctx: LayerContext<'_, S>) {
        let span = ctx.span(&id).unwrap();
        if span.name() != "s9" {
            return;
        }
        let extensions = span.extensions();
        let fields = extensions.get::<Fields>().unwrap();
        let test: &'static str = Box::leak(fields.test.clone().into_boxed_str());
        let read = TENANT.get();
        seen(test).lock().unwrap().closes.push((fields.round, read));
    }
}

fn carry() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Recorder))
            .unwrap();
    });
    contextvars::tracing::carry_spans();
}

/// Records the `TENANT` it reads when dropped, with its round, in its test's record.
struct ReadsTenant(&'static str, u64);

impl Drop for ReadsTenant {
    fn drop(&mut self) {
        let read = TENANT.get();
        seen(self.0).lock().unwrap().drops.push((self.1, read));
    }
}

#[context_var]
static READS: ReadsTenant;

/// A context that binds `TENANT` to `round` and a value that reads it when dropped, and
/// carries the span `s9{test, round}` (its only handle).
fn carrying(test: &'static str, round: u64) -> Context {
    let mut base = Context::new();
    base.run(|| {
        let _ = TENANT.set(round);
        let _ = READS.set(ReadsTenant(test, round));
        tracing::info_span!("s9", test, round).in_scope(Context::current)
    })
}

/// Something that holds a context and lets it go when dropped.
type Holder = Box<dyn Send>;

/// Round after round for about 1.5 s: a context made by [`carrying`] and `twin(&mut it)`,
/// released at the same moment on two threads, each thread with a `TENANT` of its own
/// (`1_000_001` and `1_000_002`). Returns the number of rounds, having checked the promise.
fn race(test: &'static str, twin: fn(&mut Context) -> Holder) -> usize {
    carry();
    let barrier = Arc::new(SpinBarrier::new(2));
    let (send, receive) = std::sync::mpsc::channel::<Option<Holder>>();
    let peer_barrier = Arc::clone(&barrier);
    let peer = std::thread::spawn(move || {
        let _ = TENANT.set(1_000_002);
        for (round, held) in receive.into_iter().enumerate() {
            let Some(held) = held else { break };
            peer_barrier.wait(round);
            drop(held);
        }
    });
    let _ = TENANT.set(1_000_001);
    let deadline = Instant::now() + Duration::from_millis(1_500);
    let mut round = 0;
    while Instant::now() < deadline {
        let mut ctx = carrying(test, round as u64);
        send.send(Some(twin(&mut ctx))).unwrap();
        barrier.wait(round);
        drop(ctx);
        round += 1;
    }
    send.send(None).unwrap();
    peer.join().unwrap();
    check(test, round);
    round
}

/// Each round's span closed exactly once, its closing code read no thread's `TENANT`, and
/// each round's value was dropped once, reading its own round's `TENANT`.
fn check(test: &'static str, rounds: usize) {
    let seen = std::mem::take(&mut *seen(test).lock().unwrap());
    let mut closes = vec![0_usize; rounds];
    for (round, _) in &seen.closes {
        closes[usize::try_from(*round).unwrap()] += 1;
    }
    let not_once: Vec<_> = closes
        .iter()
        .enumerate()
        .filter(|(_, n)| **n != 1)
        .take(5)
        .collect();
    assert!(
        not_once.is_empty(),
        "{test}: spans not closed exactly once (round, closes): {not_once:?} of {rounds}"
    );
    let leaked: Vec<_> = seen
        .closes
        .iter()
        .filter(|(round, read)| read.is_some_and(|read| read != *round))
        .take(5)
        .collect();
    assert!(
        leaked.is_empty(),
        "{test}: a span's closing code read another context's TENANT: {leaked:?}"
    );
    assert_eq!(seen.drops.len(), rounds, "{test}: values dropped");
    let outside: Vec<_> = seen
        .drops
        .iter()
        .filter(|(round, read)| *read != Some(*round))
        .take(5)
        .collect();
    assert!(
        outside.is_empty(),
        "{test}: values dropped outside their context (round, read): {outside:?}"
    );
    assert!(rounds > 50, "{test}: only {rounds} rounds");
}

/// A context carrying a span and its clone, released at the same moment on two threads: the
/// span closes once, never reading a thread's values, and the value drops inside the context.
#[test]
fn a_span_carrying_context_and_its_clone_released_at_once() {
    race("clone", |ctx| Box::new(ctx.clone()));
}

/// The same with a snapshot taken inside the context (`Context::current()` in `run`).
#[test]
fn a_span_carrying_context_and_a_snapshot_of_it_released_at_once() {
    race("snapshot", |ctx| Box::new(ctx.run(Context::current)));
}

/// The same with a future made `in_current_context` inside the context, dropped unpolled.
#[test]
fn a_span_carrying_context_and_a_future_made_in_it_released_at_once() {
    race("future", |ctx| {
        Box::new(ctx.run(|| async { TENANT.get() }.in_current_context()))
    });
}

/// A task spawned with `contextvars::spawn` inside a span-carrying context ends on a worker
/// at the same moment as the context is dropped on the test's thread (its handle detached):
/// the span closes once, never reading a thread's values, and the value drops inside the
/// context.
#[test]
fn a_span_carrying_context_and_a_task_spawned_in_it_released_at_once() {
    carry();
    let test = "spawn";
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let barrier = Arc::new(SpinBarrier::new(2));
    let _ = TENANT.set(1_000_001);
    let deadline = Instant::now() + Duration::from_millis(1_500);
    let mut round = 0;
    while Instant::now() < deadline {
        let mut ctx = carrying(test, round as u64);
        let task_barrier = Arc::clone(&barrier);
        let _entered = runtime.enter();
        drop(ctx.run(|| {
            contextvars::spawn(async move {
                task_barrier.wait(round);
            })
        }));
        barrier.wait(round);
        drop(ctx);
        round += 1;
    }
    // The last task's end.
    let wait = Instant::now() + Duration::from_secs(10);
    while seen(test).lock().unwrap().drops.len() < round && Instant::now() < wait {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(runtime);
    check(test, round);
}

/// Its `Drop` panics, after counting.
struct Panics;

static PANICS: AtomicUsize = AtomicUsize::new(0);

impl Drop for Panics {
    fn drop(&mut self) {
        PANICS.fetch_add(1, Ordering::SeqCst);
        panic!("an s9 value's Drop panics");
    }
}

#[context_var]
static FIRST: Panics;

#[context_var]
static SECOND: Panics;

/// What the child process prints once it has run every round.
const DONE: &str = "s9: every round released";

/// Four handles of one span-carrying context (the context, a clone, a snapshot taken in it
/// and a future made in it), holding two values whose `Drop` panics and one that reads its
/// `TENANT`, released at the same moment on four threads, each drop inside `catch_unwind`:
/// the process is never aborted, each panicking value is dropped exactly once, the span
/// closes once and the reading value drops inside its context. Run in a child process, so
/// that an abort is this test's failure and not the whole binary's.
#[test]
fn four_handles_with_panicking_values_released_at_once_never_abort() {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "four_handles_scenario",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the child process failed ({}):\n{stdout}\n{}",
        output.status,
        &stderr[stderr.len().saturating_sub(3_000)..]
    );
    assert!(stdout.contains(DONE), "{stdout}");
}

#[test]
#[ignore = "run in a child process by four_handles_with_panicking_values_released_at_once_never_abort"]
fn four_handles_scenario() {
    carry();
    let printing = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&"an s9 value's Drop panics") {
            printing(info);
        }
    }));
    let test = "four";
    let barrier = Arc::new(SpinBarrier::new(4));
    let mut senders = Vec::new();
    let mut peers = Vec::new();
    for peer in 0..3_u64 {
        let (send, receive) = std::sync::mpsc::channel::<Option<Holder>>();
        senders.push(send);
        let peer_barrier = Arc::clone(&barrier);
        peers.push(std::thread::spawn(move || {
            let _ = TENANT.set(2_000_000 + peer);
            for (round, held) in receive.into_iter().enumerate() {
                let Some(held) = held else { break };
                peer_barrier.wait(round);
                let _ = catch_unwind(AssertUnwindSafe(|| drop(held)));
            }
        }));
    }
    let _ = TENANT.set(1_000_001);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut round = 0;
    while Instant::now() < deadline {
        let mut ctx = carrying(test, round as u64);
        ctx.run(|| {
            let _ = FIRST.set(Panics);
            let _ = SECOND.set(Panics);
        });
        let holders: [Holder; 3] = [
            Box::new(ctx.clone()),
            Box::new(ctx.run(Context::current)),
            Box::new(ctx.run(|| async { TENANT.get() }.in_current_context())),
        ];
        for (send, held) in senders.iter().zip(holders) {
            send.send(Some(held)).unwrap();
        }
        barrier.wait(round);
        let _ = catch_unwind(AssertUnwindSafe(|| drop(ctx)));
        round += 1;
    }
    for send in &senders {
        send.send(None).unwrap();
    }
    for peer in peers {
        peer.join().unwrap();
    }
    assert_eq!(PANICS.load(Ordering::SeqCst), 2 * round, "panicking drops");
    check(test, round);
    println!("{DONE} ({round} rounds)");
}
