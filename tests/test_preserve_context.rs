//! `#[preserve_context]` (B27, B28): the future captures the caller's context at the call,
//! runs and is dropped inside it, keeps its sets to itself, and the rewrite keeps every
//! signature form whole and its `Send`-ness unchanged.

use std::fmt::Display;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use contextvars::{Context, FutureExt, context_var, preserve_context};

#[context_var]
static REQUEST: u32;

#[context_var]
static USER: &'static str = "guest";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

/// Polls `fut` once with a no-op waker.
fn poll_once<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut std::task::Context::from_waker(Waker::noop()))
}

// ---------------------------------------------------------------------------------------
// B27: captured at the call, not at the first poll.

#[preserve_context]
async fn read_request() -> (Option<u32>, &'static str) {
    tokio::task::yield_now().await;
    (REQUEST.get(), USER.get())
}

/// The same body without the attribute: the control that shows what the macro changes.
async fn read_request_plain() -> (Option<u32>, &'static str) {
    tokio::task::yield_now().await;
    (REQUEST.get(), USER.get())
}

#[test]
fn context_is_captured_at_the_call_not_at_the_first_poll() {
    runtime().block_on(async {
        let request = Context::new()
            .with_value(&REQUEST, 7)
            .with_value(&USER, "ann");
        let (preserved, plain) = request
            .clone()
            .run(|| (read_request(), read_request_plain()));
        // The caller's context changes after the call and before the first poll.
        let _token = REQUEST.set(8);
        // Spawned later, with plain `tokio::spawn`, on another worker.
        let preserved = tokio::spawn(preserved).await.unwrap();
        let plain = tokio::spawn(plain).await.unwrap();
        assert_eq!(preserved, (Some(7), "ann"));
        // Without the attribute the future reads the context of whoever polls it: a task
        // spawned without a context reads defaults only (B26).
        assert_eq!(plain, (None, "guest"));
    });
}

#[test]
fn a_future_awaited_in_another_context_keeps_its_own() {
    runtime().block_on(async {
        let fut = Context::new().with_value(&REQUEST, 1).run(read_request);
        let seen = fut
            .with_context(Context::new().with_value(&REQUEST, 2))
            .await;
        assert_eq!(seen, (Some(1), "guest"));
    });
}

#[preserve_context]
async fn set_inside(value: u32) -> Option<u32> {
    let _token = REQUEST.set(value);
    tokio::task::yield_now().await;
    let _user = USER.scoped("inner");
    tokio::task::yield_now().await;
    REQUEST.get()
}

#[test]
fn sets_in_the_body_stay_inside() {
    runtime().block_on(async {
        let _token = REQUEST.set(1);
        assert_eq!(set_inside(99).await, Some(99));
        assert_eq!((REQUEST.get(), USER.get()), (Some(1), "guest"));
    });
}

#[preserve_context]
async fn echo_after_yields(rounds: u64) -> Option<u32> {
    for _ in 0..rounds {
        tokio::task::yield_now().await;
        assert_eq!(REQUEST.get(), REQUEST.get());
    }
    REQUEST.get()
}

#[test]
fn many_futures_made_in_many_contexts_and_spawned_later_each_see_their_own() {
    runtime().block_on(async {
        let mut futures = Vec::new();
        for i in 0..200_u32 {
            let rounds = u64::from(i.wrapping_mul(2_654_435_761) % 7);
            let fut = Context::new()
                .with_value(&REQUEST, i)
                .run(|| echo_after_yields(rounds));
            futures.push(fut);
        }
        let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
        for (i, handle) in (0..).zip(handles) {
            assert_eq!(handle.await.unwrap(), Some(i));
        }
    });
}

// ---------------------------------------------------------------------------------------
// Arguments: moved into the future, dropped when the body ends, inside the context.

/// What the probes saw when dropped: their name and the value of `REQUEST`.
type Log = Arc<Mutex<Vec<(&'static str, Option<u32>)>>>;

/// Records, when dropped, the value of `REQUEST` it sees.
struct Probe {
    name: &'static str,
    log: Log,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.log.lock().unwrap().push((self.name, REQUEST.get()));
    }
}

#[allow(dead_code, reason = "the second field is only dropped")]
struct Pair(Probe, Probe);

#[preserve_context]
async fn takes_patterns(_: Probe, Pair(first, _): Pair, mut last: Probe) {
    last.name = "last";
    drop(first);
    tokio::task::yield_now().await;
}

/// The same signature without the attribute: the drop order to match.
async fn takes_patterns_plain(_: Probe, Pair(first, _): Pair, mut last: Probe) {
    last.name = "last";
    drop(first);
    tokio::task::yield_now().await;
}

fn probes(log: &Log) -> (Probe, Pair, Probe) {
    let probe = |name| Probe {
        name,
        log: Arc::clone(log),
    };
    (
        probe("ignored"),
        Pair(probe("first"), probe("second")),
        probe("renamed"),
    )
}

#[test]
fn arguments_are_dropped_when_the_body_ends_inside_the_context() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (ignored, pair, last) = probes(&log);
    let mut fut = Context::new()
        .with_value(&REQUEST, 5)
        .run(|| Box::pin(takes_patterns(ignored, pair, last)));
    // Nothing is dropped at the call: every argument, even `_`, moved into the future.
    assert!(log.lock().unwrap().is_empty());
    assert!(poll_once(fut.as_mut()).is_pending());
    assert_eq!(*log.lock().unwrap(), [("first", Some(5))]);
    assert!(poll_once(fut.as_mut()).is_ready());
    // Dropped when the body ends, before the future itself is dropped, in the order an
    // `async fn` drops them: the last argument first.
    let seen = log.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            ("first", Some(5)),
            ("last", Some(5)),
            ("second", Some(5)),
            ("ignored", Some(5))
        ]
    );

    // The same order as the `async fn` it replaces.
    let plain_log = Arc::new(Mutex::new(Vec::new()));
    let (ignored, pair, last) = probes(&plain_log);
    let mut plain = Box::pin(takes_patterns_plain(ignored, pair, last));
    while poll_once(plain.as_mut()).is_pending() {}
    let names =
        |log: &[(&'static str, Option<u32>)]| log.iter().map(|(n, _)| *n).collect::<Vec<_>>();
    assert_eq!(names(&plain_log.lock().unwrap()), names(&seen));
}

#[test]
fn arguments_of_a_future_dropped_unpolled_are_dropped_inside_the_context() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (ignored, pair, last) = probes(&log);
    let fut = Context::new()
        .with_value(&REQUEST, 6)
        .run(|| takes_patterns(ignored, pair, last));
    let _token = REQUEST.set(0);
    drop(fut);
    let mut seen = log.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(
        seen,
        [
            ("first", Some(6)),
            ("ignored", Some(6)),
            ("renamed", Some(6)),
            ("second", Some(6))
        ]
    );
}

// ---------------------------------------------------------------------------------------
// B28: signature forms.

/// Generics, a `where` clause, `impl Trait` arguments, elided and named lifetimes, a
/// reference returned from an argument.
#[preserve_context]
pub async fn pick<'a, T, const N: usize>(
    items: &'a [T; N],
    key: impl Fn(&T) -> usize,
    label: &str,
) -> Option<&'a T>
where
    T: Display + Sync,
{
    tokio::task::yield_now().await;
    let best = items.iter().max_by_key(|item| key(item))?;
    assert!(!label.is_empty());
    Some(best)
}

/// Elided lifetimes only, the output's taken from the input.
#[preserve_context]
async fn first_word(text: &str) -> &str {
    tokio::task::yield_now().await;
    text.split(' ').next().unwrap_or_default()
}

/// `'_` in a path, an elided reference in an `impl Trait` argument, a `dyn` reference.
#[preserve_context]
async fn joined(
    parts: std::slice::Iter<'_, &str>,
    sep: impl AsRef<str> + Send,
    suffix: &dyn Display,
) -> String {
    tokio::task::yield_now().await;
    let mut out = parts.copied().collect::<Vec<_>>().join(sep.as_ref());
    out.push_str(&suffix.to_string());
    out
}

/// `?`, early `return`, and an error converted with `From`.
#[preserve_context]
async fn parse_positive(text: &str) -> Result<u32, String> {
    tokio::task::yield_now().await;
    let n: i64 = text.parse().map_err(|_| "not a number")?;
    if n <= 0 {
        return Err(format!("{n} is not positive"));
    }
    u32::try_from(n).map_err(|e| e.to_string())
}

/// An `impl Trait` output.
#[preserve_context]
async fn describe(n: u32) -> impl Display {
    tokio::task::yield_now().await;
    format!("#{n} in {:?}", REQUEST.get())
}

/// Attributes, docs and `mut` bindings are kept. (`unsafe fn` is tested in the edition
/// 2021 crate: this workspace forbids `unsafe_code`.)
#[inline]
#[must_use = "futures do nothing unless awaited"]
#[preserve_context]
pub(crate) async fn add_one(mut value: u32) -> u32 {
    #![allow(clippy::cast_possible_truncation)]
    value += 1;
    tokio::task::yield_now().await;
    value
}

#[test]
fn free_function_forms() {
    runtime().block_on(async {
        let items = [3_u8, 9, 4];
        assert_eq!(pick(&items, |x| usize::from(*x), "max").await, Some(&9));
        assert_eq!(first_word("hello world").await, "hello");
        let parts = ["a", "b"];
        assert_eq!(joined(parts.iter(), "-", &1).await, "a-b1");
        assert_eq!(parse_positive("12").await, Ok(12));
        assert_eq!(parse_positive("x").await, Err("not a number".to_string()));
        assert_eq!(
            parse_positive("-1").await,
            Err("-1 is not positive".to_string())
        );
        let _token = REQUEST.set(3);
        assert_eq!(describe(1).await.to_string(), "#1 in Some(3)");
        assert_eq!(add_one(41).await, 42);
    });
}

struct Counter {
    hits: AtomicUsize,
    name: String,
}

impl Counter {
    fn new(name: &str) -> Self {
        Counter {
            hits: AtomicUsize::new(0),
            name: name.to_string(),
        }
    }

    #[preserve_context]
    async fn by_ref(&self) -> (usize, Option<u32>) {
        tokio::task::yield_now().await;
        (self.hits.fetch_add(1, Ordering::SeqCst) + 1, REQUEST.get())
    }

    #[preserve_context]
    async fn by_mut(&mut self, suffix: &str) -> &str {
        tokio::task::yield_now().await;
        self.name.push_str(suffix);
        &self.name
    }

    #[preserve_context]
    async fn by_value(self) -> String {
        tokio::task::yield_now().await;
        self.name
    }

    #[preserve_context]
    async fn by_mut_value(mut self) -> String {
        tokio::task::yield_now().await;
        self.name.push('!');
        self.name
    }

    #[preserve_context]
    async fn by_arc(self: Arc<Self>) -> usize {
        tokio::task::yield_now().await;
        // A closure and a macro in the body both reach the receiver.
        let read = || self.hits.load(Ordering::SeqCst);
        assert_eq!(read(), self.hits.load(Ordering::SeqCst), "{}", self.name);
        Arc::strong_count(&self)
    }

    #[preserve_context]
    async fn by_pin(mut self: Pin<&mut Self>) -> usize {
        tokio::task::yield_now().await;
        self.as_mut().get_mut().hits.fetch_add(10, Ordering::SeqCst) + 10
    }

    #[preserve_context]
    async fn by_box(self: Box<Self>, other: Self) -> String {
        tokio::task::yield_now().await;
        // `self::` paths are module paths, not the receiver.
        self::join_names(&self.name, &other.name)
    }

    /// An associated function: no receiver.
    #[preserve_context]
    async fn make(name: &str) -> Self {
        tokio::task::yield_now().await;
        Self::new(name)
    }
}

fn join_names(a: &str, b: &str) -> String {
    format!("{a}+{b}")
}

#[test]
fn receiver_forms() {
    runtime().block_on(async {
        let ctx = Context::new().with_value(&REQUEST, 4);
        let mut counter = Counter::make("c").await;
        let fut = ctx.clone().run(|| counter.by_ref());
        assert_eq!(fut.await, (1, Some(4)));
        assert_eq!(counter.by_mut("d").await, "cd");
        assert_eq!(Counter::new("v").by_value().await, "v");
        assert_eq!(Counter::new("m").by_mut_value().await, "m!");
        let shared = Arc::new(Counter::new("a"));
        assert_eq!(Arc::clone(&shared).by_arc().await, 2);
        let mut pinned = pin!(Counter::new("p"));
        assert_eq!(pinned.as_mut().by_pin().await, 10);
        assert_eq!(
            Box::new(Counter::new("x")).by_box(Counter::new("y")).await,
            "x+y"
        );
    });
}

/// A type holding a borrow, so that `Self` carries a lifetime the future must hold.
struct Borrowed<'a> {
    text: &'a str,
}

impl<'a> Borrowed<'a> {
    #[preserve_context]
    async fn text(&self) -> &'a str {
        tokio::task::yield_now().await;
        self.text
    }

    #[preserve_context]
    async fn longer(self, other: Borrowed<'a>) -> &'a str {
        tokio::task::yield_now().await;
        if other.text.len() > self.text.len() {
            other.text
        } else {
            self.text
        }
    }
}

trait Service {
    async fn call(&self, request: &str) -> usize;
    async fn call_owned(self, request: String) -> usize;
}

impl Service for Counter {
    #[preserve_context]
    async fn call(&self, request: &str) -> usize {
        tokio::task::yield_now().await;
        request.len() + self.name.len() + REQUEST.get().unwrap_or_default() as usize
    }

    #[preserve_context]
    async fn call_owned(self, request: String) -> usize {
        tokio::task::yield_now().await;
        request.len() + self.name.len()
    }
}

impl<'a> Service for Borrowed<'a> {
    #[preserve_context]
    async fn call(&self, request: &str) -> usize {
        tokio::task::yield_now().await;
        self.text.len() + request.len()
    }

    #[preserve_context]
    async fn call_owned(self, request: String) -> usize {
        let text: &'a str = self.text;
        tokio::task::yield_now().await;
        text.len() + request.len()
    }
}

async fn call_generic<S: Service>(service: &S) -> usize {
    service.call("four").await
}

#[test]
fn methods_of_impls_with_lifetimes_and_of_trait_impls() {
    runtime().block_on(async {
        let text = String::from("borrowed");
        let borrowed = Borrowed { text: &text };
        assert_eq!(borrowed.text().await, "borrowed");
        assert_eq!(
            Borrowed { text: "a" }.longer(Borrowed { text: "bb" }).await,
            "bb"
        );
        let counter = Counter::new("ab");
        let fut = Context::new()
            .with_value(&REQUEST, 10)
            .run(|| counter.call("xyz"));
        assert_eq!(fut.await, 15);
        assert_eq!(call_generic(&borrowed).await, 12);
        assert_eq!(call_generic(&counter).await, 6);
        assert_eq!(Counter::new("n").call_owned("req".into()).await, 4);
        assert_eq!(Borrowed { text: "t" }.call_owned("req".into()).await, 4);
    });
}

// ---------------------------------------------------------------------------------------
// `Send`-ness: the future is `Send` exactly when the original is.

fn assert_send<T: Send>(_: &T) {}

/// Tells, at the call site where the type is concrete, whether it is `Send`.
struct SendProbe<T>(std::marker::PhantomData<T>);

trait IsSend {
    fn is_send(&self) -> bool {
        true
    }
}
impl<T: Send> IsSend for SendProbe<T> {}

trait NotSend {
    fn is_send(&self) -> bool {
        false
    }
}
impl<T> NotSend for &SendProbe<T> {}

fn probe<T>(_: &T) -> SendProbe<T> {
    SendProbe(std::marker::PhantomData)
}

/// Whether the value of this expression is `Send` (autoref picks `IsSend` when it is).
macro_rules! is_send {
    ($value:expr) => {{
        #[allow(clippy::needless_borrow)]
        let send = (&probe(&$value)).is_send();
        send
    }};
}

#[preserve_context]
async fn holds_rc_across_await() -> usize {
    let rc = std::rc::Rc::new(5);
    tokio::task::yield_now().await;
    *rc
}

async fn holds_rc_across_await_plain() -> usize {
    let rc = std::rc::Rc::new(5);
    tokio::task::yield_now().await;
    *rc
}

#[preserve_context]
async fn generic_send<T: Display>(value: T) -> String {
    tokio::task::yield_now().await;
    value.to_string()
}

#[test]
fn futures_are_send_exactly_when_the_original_is() {
    let counter = Counter::new("s");
    assert_send(&read_request());
    assert_send(&set_inside(1));
    assert_send(&first_word("a b"));
    assert_send(&counter.by_ref());
    assert_send(&counter.call("x"));
    assert_send(&Arc::new(Counter::new("a")).by_arc());
    assert_send(&generic_send(1));
    assert!(is_send!(generic_send(1)));

    // Not `Send` where the original is not: an `Rc` held across an await, or a non-`Send`
    // argument.
    assert!(!is_send!(holds_rc_across_await()));
    assert!(!is_send!(holds_rc_across_await_plain()));
    assert!(!is_send!(generic_send(std::rc::Rc::new(1))));
    assert!(!is_send!(generic_send_plain(std::rc::Rc::new(1))));

    runtime().block_on(async {
        assert_eq!(holds_rc_across_await().await, 5);
    });
}

async fn generic_send_plain<T: Display>(value: T) -> String {
    tokio::task::yield_now().await;
    value.to_string()
}

// ---------------------------------------------------------------------------------------
// Drop, cancellation, panics, tasks without a context.

#[preserve_context]
async fn holds_a_local(log: Log) {
    let _local = Probe { name: "local", log };
    std::future::pending::<()>().await;
}

#[test]
fn a_future_cancelled_mid_body_drops_its_locals_inside_the_context() {
    let log = Log::default();
    let mut fut = Context::new()
        .with_value(&REQUEST, 11)
        .run(|| Box::pin(holds_a_local(Arc::clone(&log))));
    assert!(poll_once(fut.as_mut()).is_pending());
    let _token = REQUEST.set(12);
    drop(fut);
    assert_eq!(*log.lock().unwrap(), [("local", Some(11))]);
}

#[preserve_context]
async fn panics_after_a_set() {
    let _token = REQUEST.set(13);
    tokio::task::yield_now().await;
    panic!("the body panics");
}

#[test]
fn a_panic_in_the_body_leaves_the_callers_context_as_it_was() {
    runtime().block_on(async {
        let _token = REQUEST.set(1);
        let joined = tokio::spawn(panics_after_a_set()).await;
        assert!(joined.unwrap_err().is_panic());
        let mut fut = pin!(panics_after_a_set());
        assert!(poll_once(fut.as_mut()).is_pending());
        let caught =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll_once(fut.as_mut())));
        assert!(caught.is_err());
        assert_eq!(REQUEST.get(), Some(1));
    });
}

#[test]
fn in_a_task_spawned_without_a_context_the_body_can_still_set() {
    runtime().block_on(async {
        // A plain `tokio::spawn` task has no context (B26): there `set` would fail. The
        // preserved future runs in the (empty) snapshot taken at the call, a context of
        // its own, where it may set.
        let seen = tokio::spawn(async { (set_inside(5).await, REQUEST.try_set(1).is_err()) });
        assert_eq!(seen.await.unwrap(), (Some(5), true));
    });
}

/// A trait's provided method.
trait Greet {
    fn name(&self) -> &str;

    #[preserve_context]
    async fn greet(&self, greeting: &str) -> String {
        tokio::task::yield_now().await;
        format!("{greeting}, {} ({:?})", self.name(), REQUEST.get())
    }
}

impl Greet for Counter {
    fn name(&self) -> &str {
        &self.name
    }
}

#[test]
fn a_provided_trait_method() {
    runtime().block_on(async {
        let counter = Counter::new("ann");
        let fut = Context::new()
            .with_value(&REQUEST, 2)
            .run(|| counter.greet("hi"));
        assert_send(&fut);
        assert_eq!(fut.await, "hi, ann (Some(2))");
    });
}

/// A parameter that `#[cfg]` removes takes its rebinding with it.
#[preserve_context]
async fn with_cfg_param(
    kept: u32,
    #[cfg(any())] removed: DoesNotExist,
    #[cfg(not(any()))] present: u32,
) -> u32 {
    kept + present
}

#[test]
fn cfg_on_a_parameter() {
    runtime().block_on(async {
        assert_eq!(with_cfg_param(1, 2).await, 3);
    });
}
