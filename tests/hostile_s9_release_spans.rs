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

#[path = "support/spin.rs"]
mod spin;

use spin::SpinBarrier;

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

/// Runs [`four_handles_scenario`] (`scenario`: which one) in a child process (so that an abort is this test's failure,
/// not the whole binary's): it must exit successfully, having run every round.
fn run_four_handles(scenario: &str) {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "four_handles_scenario",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("S9_SCENARIO", scenario)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{scenario}: the child process failed ({}):\n{stdout}\n{}",
        output.status,
        &stderr[stderr.len().saturating_sub(3_000)..]
    );
    assert!(stdout.contains(DONE), "{scenario}: {stdout}");
}

/// Four handles of one span-carrying context (the context, a clone, a snapshot taken in it
/// and a future made in it), holding two values whose `Drop` panics and one that reads its
/// `TENANT`, released at the same moment on four threads, each drop inside `catch_unwind`:
/// the process is never aborted, each panicking value is dropped exactly once, the span
/// closes once and the reading value drops inside its context.
#[test]
fn four_handles_with_panicking_values_released_at_once_never_abort() {
    run_four_handles("shared root");
}

/// The same with handles that have roots of their own sharing the values (a clone, a
/// snapshot taken in another span, a copy written to): the process is never aborted, each
/// panicking value is dropped exactly once and the span closes once (where the reading value
/// drops is the ignored bug above, not checked here).
#[test]
fn four_handles_with_own_roots_and_panicking_values_released_at_once_never_abort() {
    run_four_handles("own roots");
}

#[test]
#[ignore = "run in a child process by the four_handles_* tests"]
fn four_handles_scenario() {
    carry();
    let printing = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&"an s9 value's Drop panics") {
            printing(info);
        }
    }));
    let scenario = std::env::var("S9_SCENARIO").expect("run by its parent test");
    if let Some(kind) = scenario.strip_prefix("pair: ") {
        pair_scenario(kind);
        return;
    }
    let own_roots = scenario == "own roots";
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
        let holders: [Holder; 3] = if own_roots {
            let mut copy = ctx.clone();
            copy.run(|| drop(OTHER.set(1)));
            [
                Box::new(ctx.clone()),
                Box::new(ctx.run(|| tracing::info_span!("inner").in_scope(Context::current))),
                Box::new(copy),
            ]
        } else {
            [
                Box::new(ctx.clone()),
                Box::new(ctx.run(Context::current)),
                Box::new(ctx.run(|| async { TENANT.get() }.in_current_context())),
            ]
        };
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
    // The peers' drops have all returned (joined): every value has been dropped.
    assert_eq!(PANICS.load(Ordering::SeqCst), 2 * round, "panicking drops");
    if own_roots {
        let seen = std::mem::take(&mut *seen(test).lock().unwrap());
        let mut closes = vec![0_usize; round];
        for (closed, _) in &seen.closes {
            closes[usize::try_from(*closed).unwrap()] += 1;
        }
        assert!(closes.iter().all(|n| *n == 1), "spans not closed once");
        assert_eq!(seen.drops.len(), round, "reading values dropped");
    } else {
        check(test, round);
    }
    println!("{DONE} ({round} rounds)");
}

/// Round after round: a span-carrying context and a twin with a root of its own released at
/// the same moment on two threads; checks only the span (closed exactly once per round, its
/// closing code reading no thread's `TENANT`), not where the values drop.
fn race_span_only(test: &'static str, twin: fn(&mut Context) -> Holder) {
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
    let seen = std::mem::take(&mut *seen(test).lock().unwrap());
    let mut closes = vec![0_usize; round];
    for (closed, read) in &seen.closes {
        closes[usize::try_from(*closed).unwrap()] += 1;
        assert!(
            read.is_none_or(|read| read == *closed),
            "{test}: a span's closing code read {read:?} in round {closed}"
        );
    }
    let not_once: Vec<_> = closes
        .iter()
        .enumerate()
        .filter(|(_, n)| **n != 1)
        .take(5)
        .collect();
    assert!(
        not_once.is_empty(),
        "{test}: (round, closes) {not_once:?} of {round}"
    );
    assert!(round > 50, "{test}: only {round} rounds");
}

/// A span-carrying context and a copy of it that was written to (a root of its own that
/// carries the same span), released at once: the span closes exactly once.
#[test]
fn a_span_carrying_context_and_a_written_copy_released_at_once_close_the_span_once() {
    race_span_only("written copy", |ctx| {
        let mut copy = ctx.clone();
        copy.run(|| drop(OTHER.set(1)));
        Box::new(copy)
    });
}

/// A span-carrying context and a snapshot taken inside it while another span is entered
/// (which must carry that other span, so it gets a root of its own), released at once: each
/// span closes exactly once.
#[test]
fn a_span_carrying_context_and_a_snapshot_in_another_span_released_at_once() {
    race_span_only("other span", |ctx| {
        Box::new(ctx.run(|| tracing::info_span!("inner").in_scope(Context::current)))
    });
}

#[context_var]
static OTHER: u32;

/// Its `Clone` sets `OTHER` in a snapshot of the context being read, and records whether
/// that panicked.
#[derive(Debug)]
struct SetsInSnapshot;

static SNAPSHOT_SET_PANICKED: Mutex<Vec<bool>> = Mutex::new(Vec::new());

impl Clone for SetsInSnapshot {
    fn clone(&self) -> Self {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            Context::current().run(|| drop(OTHER.set(1)));
        }));
        SNAPSHOT_SET_PANICKED.lock().unwrap().push(outcome.is_err());
        SetsInSnapshot
    }
}

#[context_var]
static SETS_IN_SNAPSHOT: SetsInSnapshot;

/// `get`'s docs: a `set` made by a value's `Clone` in a snapshot of the context being read
/// panics, since that snapshot holds the value. Also where the snapshot must carry a span
/// other than the context's (the `Clone` runs inside another span entered by the reader),
/// and the read leaves the context whole.
#[test]
fn a_clone_that_sets_in_a_snapshot_carrying_another_span_panics() {
    carry();
    let mut ctx = tracing::info_span!("s9", test = "clone snapshot", round = 0_u64)
        .in_scope(Context::current);
    let read = ctx.run(|| {
        let _value = SETS_IN_SNAPSHOT.scoped(SetsInSnapshot);
        let same_span = SETS_IN_SNAPSHOT.get().is_some();
        let other_span = tracing::info_span!("entered by the reader")
            .in_scope(|| SETS_IN_SNAPSHOT.get().is_some());
        (same_span, other_span, OTHER.get())
    });
    assert_eq!(read, (true, true, None));
    assert_eq!(*SNAPSHOT_SET_PANICKED.lock().unwrap(), [true, true]);
    drop(ctx);
    let _ = std::mem::take(&mut *seen("clone snapshot").lock().unwrap());
}

/// B24 ("every value a context holds is dropped inside that context") for a snapshot taken
/// in the context while another span is entered (no write: only the span differs, so the
/// snapshot gets a root of its own sharing the values), the two released at once on two
/// threads: the value must drop once, reading its own context's `TENANT`. Fails in most runs
/// (7 of 8 here): some rounds' values read no `TENANT` at all, dropped after both contexts
/// were emptied, as in `hostile_core_release_race.rs`'s ignored written-copy test, but here
/// with no write at all, only a span entered where the snapshot is taken.
#[test]
#[ignore = "bug: a snapshot taken in another span (its own root, sharing the values) and its context, dropped at once on two threads: some values drop outside any context holding their bindings (TENANT reads None)"]
fn a_value_of_a_span_carrying_context_and_a_snapshot_in_another_span_drops_inside() {
    race("other span values", |ctx| {
        Box::new(ctx.run(|| tracing::info_span!("inner").in_scope(Context::current)))
    });
}

/// The same two handles (a span-carrying context and a snapshot of it taken in another
/// span) dropped one after the other on one thread, in both orders, and on two threads one
/// after the other: the value drops once, inside its context.
#[test]
fn a_value_of_a_context_and_a_snapshot_in_another_span_dropped_in_turn_drops_inside() {
    carry();
    let test = "other span in turn";
    let _ = TENANT.set(1_000_001);
    for round in 0..300_u64 {
        let mut ctx = carrying(test, round);
        let snapshot = ctx.run(|| tracing::info_span!("inner").in_scope(Context::current));
        match round % 3 {
            0 => {
                drop(ctx);
                drop(snapshot);
            }
            1 => {
                drop(snapshot);
                drop(ctx);
            }
            _ => {
                std::thread::spawn(move || drop(snapshot)).join().unwrap();
                drop(ctx);
            }
        }
    }
    check(test, 300);
}

/// A context holding two values whose `Drop` panics and `twin(&mut it)`, dropped at the same
/// moment on two threads, round after round for 2 s, each drop inside `catch_unwind`, in the
/// child process: prints [`DONE`] if every round's two values were dropped exactly once.
fn pair_scenario(kind: &str) {
    let twin: fn(&mut Context) -> Context = match kind {
        "written copy" => |ctx| {
            let mut copy = ctx.clone();
            copy.run(|| drop(OTHER.set(1)));
            copy
        },
        "snapshot in another span" => {
            |ctx| ctx.run(|| tracing::info_span!("inner").in_scope(Context::current))
        }
        other => panic!("no scenario {other}"),
    };
    let in_span = kind != "written copy";
    carry();
    let printing = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&"an s9 value's Drop panics") {
            printing(info);
        }
    }));
    let barrier = Arc::new(SpinBarrier::new(2));
    let (send, receive) = std::sync::mpsc::channel::<Option<Context>>();
    let peer_barrier = Arc::clone(&barrier);
    let peer = std::thread::spawn(move || {
        for (round, ctx) in receive.into_iter().enumerate() {
            let Some(ctx) = ctx else { break };
            peer_barrier.wait(round);
            let _ = catch_unwind(AssertUnwindSafe(|| drop(ctx)));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut round = 0;
    while Instant::now() < deadline {
        let values = Context::new()
            .with_value(&FIRST, Panics)
            .with_value(&SECOND, Panics);
        // A span only where the twin is taken in another one.
        let mut ctx = if in_span {
            let ctx = tracing::info_span!("s9 pair").in_scope(values.wrap(Context::current));
            let _ = catch_unwind(AssertUnwindSafe(|| drop(values)));
            ctx
        } else {
            values
        };
        send.send(Some(twin(&mut ctx))).unwrap();
        barrier.wait(round);
        let _ = catch_unwind(AssertUnwindSafe(|| drop(ctx)));
        round += 1;
    }
    send.send(None).unwrap();
    peer.join().unwrap();
    assert_eq!(PANICS.load(Ordering::SeqCst), 2 * round, "panicking drops");
    println!("{DONE} ({round} rounds)");
}

/// B39 ("a context's values go one at a time, so a `Drop` that panics never aborts the
/// process") for a context and a copy of it that was written to (the copy's root is its own,
/// the two values shared by both roots), dropped at the same moment on two threads: the
/// process must not abort. No span is needed: this is the panicking twin of
/// `hostile_core_release_race.rs`'s ignored written-copy test, whose clone-only version
/// (`a_context_and_its_clone_dropped_at_once_on_two_threads_never_abort`) holds.
#[test]
fn a_context_and_a_written_copy_with_panicking_values_dropped_at_once_never_abort() {
    run_four_handles("pair: written copy");
}

/// The same for a snapshot taken in the context while another span is entered (after
/// `carry_spans()`): no write at all, only a span, gives the snapshot a root of its own, and
/// the two dropped at once must not abort the process.
#[test]
fn a_context_and_a_snapshot_in_another_span_with_panicking_values_dropped_at_once_never_abort() {
    run_four_handles("pair: snapshot in another span");
}

/// Runs `rounds` parent tasks (`contextvars::spawn`), each binding `TENANT` and a value that
/// reads it when dropped, and inside a span of its own (entered after the context was made)
/// starting a child with `start`; parent and child meet at a barrier and end at about the
/// same moment on two workers. Checks that each value was dropped once, inside its context.
fn parent_and_child_in_another_span(
    test: &'static str,
    runtime: &tokio::runtime::Runtime,
    start: fn(Arc<tokio::sync::Barrier>),
) {
    carry();
    let rounds = 3_000_usize;
    runtime.block_on(async {
        let parents: Vec<_> = (0..rounds)
            .map(|round| {
                let round = round as u64;
                contextvars::spawn(async move {
                    let _ = TENANT.set(round);
                    let _ = READS.set(ReadsTenant(test, round));
                    let meet = Arc::new(tokio::sync::Barrier::new(2));
                    let child_meet = Arc::clone(&meet);
                    tracing::info_span!("child's span").in_scope(|| start(child_meet));
                    meet.wait().await;
                })
            })
            .collect();
        for parent in parents {
            parent.await.unwrap();
        }
        for _ in 0..1_000 {
            if seen(test).lock().unwrap().drops.len() == rounds {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let seen = std::mem::take(&mut *seen(test).lock().unwrap());
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
}

fn two_workers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// B24 in everyday use: a task binds a value, enters a span, and spawns a child there with
/// `contextvars::spawn`; the two end together on two workers: the value is dropped once,
/// inside the context (reading the task's `TENANT`).
#[test]
fn a_value_shared_with_a_child_spawned_in_another_span_drops_inside_the_context() {
    parent_and_child_in_another_span("spawn in span", &two_workers(), |meet| {
        drop(contextvars::spawn(async move {
            meet.wait().await;
        }));
    });
}

/// The same with the child a future made `in_current_context` in the span, given to a
/// plain `tokio::spawn`.
#[test]
fn a_value_shared_with_a_future_made_in_another_span_drops_inside_the_context() {
    parent_and_child_in_another_span("future in span", &two_workers(), |meet| {
        drop(tokio::spawn(
            async move {
                meet.wait().await;
            }
            .in_current_context(),
        ));
    });
}

#[cfg(all(tokio_unstable, feature = "hooks"))]
mod hooks {
    use super::*;

    /// Under the hooks: the child a plain `tokio::spawn` made in the span, inheriting the
    /// task's context.
    #[test]
    fn a_value_inherited_by_a_plain_task_spawned_in_another_span_drops_inside_the_context() {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        let runtime = contextvars::hooks::install(builder.worker_threads(2).enable_all())
            .build()
            .unwrap();
        parent_and_child_in_another_span("plain spawn in span", &runtime, |meet| {
            drop(tokio::spawn(async move {
                meet.wait().await;
            }));
        });
    }
}
