//! Contexts: snapshots of all variable bindings that code can run inside.

use std::any::Any;
use std::fmt;
use std::mem::ManuallyDrop;

use crate::carried;
#[cfg(feature = "hooks")]
use crate::carried::Carried;
use crate::current::{self, Entered, Frame, LastPoll, PollSlot, PollStart, Polled, Poller};
use crate::map;
use crate::var::{ContextVar, DefaultKind, Key, downcast};

/// A mapping from context variables to values: Python's `contextvars.Context`.
///
/// - [`Context::current()`] (or [`copy_context()`]) snapshots the current bindings in O(1),
///   whatever their number. [`Context::new()`] is empty.
/// - [`run`](Context::run) makes a context current for the length of a closure; what the
///   closure sets stays in the context. A future runs in one with
///   [`FutureExt::with_context`](crate::FutureExt::with_context).
/// - The mapping view ([`get`](Context::get), [`contains`](Context::contains),
///   [`len`](Context::len), [`iter`](Context::iter), `Debug`) shows bindings, never
///   defaults.
///
/// Every `Context` value is its own context: a clone, [`Context::new()`] and
/// [`Context::current()`] each make a new one, independent of the original both ways, and a
/// [`Token`](crate::Token) made in one is refused by another. Clones share the values
/// (behind `Arc`), never copy them.
///
/// ```
/// # use context_core as contextvars;
/// # use contextvars::{Context, ContextVar, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct USER {}
/// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
/// # static USER: ContextVar<USER> = ContextVar::new("user");
/// let mut ctx = Context::new();
/// ctx.run(|| {
///     let _ = USER.set("ann");
/// });
/// assert_eq!(USER.get(), None); // the caller's context is untouched
/// assert_eq!(ctx.get(&USER), Some(&"ann")); // the set stayed in `ctx`
/// assert_eq!(ctx.run(|| USER.get()), Some("ann"));
/// ```
pub struct Context {
    /// The bindings, and, in their map's root, the span and OpenTelemetry context current
    /// where the context was taken, where carrying them is on.
    frame: Frame,
}

/// A snapshot of the current context: the same as [`Context::current()`], named after
/// Python's `contextvars.copy_context()`.
///
/// ```
/// # use context_core as contextvars;
/// # use contextvars::{copy_context, ContextVar, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct USER {}
/// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
/// # static USER: ContextVar<USER> = ContextVar::new("user");
/// let _token = USER.set("ann");
/// let snapshot = copy_context();
/// let _later = USER.set("bob");
/// assert_eq!(snapshot.get(&USER), Some(&"ann"));
/// ```
#[must_use]
pub fn copy_context() -> Context {
    Context::current()
}

impl Context {
    /// An empty context: every variable reads as its default, or as unset.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{Context, ContextVar, Key, NoDefault};
    /// # #[allow(non_camel_case_types)] struct USER {}
    /// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
    /// # static USER: ContextVar<USER> = ContextVar::new("user");
    /// let _token = USER.set("ann");
    /// assert_eq!(Context::new().run(|| USER.get()), None);
    /// ```
    #[must_use]
    pub const fn new() -> Self {
        Context {
            frame: Frame::EMPTY,
        }
    }

    /// A snapshot of the current context, in O(1): later sets on either side are not seen by
    /// the other. In a tokio task that runs outside any context, an empty context, so that such
    /// a task never sees another's values.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{Context, ContextVar, Key, NoDefault};
    /// # #[allow(non_camel_case_types)] struct USER {}
    /// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
    /// # static USER: ContextVar<USER> = ContextVar::new("user");
    /// let _token = USER.set("ann");
    /// let mut snapshot = Context::current();
    /// snapshot.run(|| { let _ = USER.set("bob"); });
    /// assert_eq!(USER.get(), Some("ann"));
    /// assert_eq!(snapshot.get(&USER), Some(&"bob"));
    /// ```
    #[must_use]
    // Always inlined: every spawn comes here.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn current() -> Self {
        let bindings = current::snapshot();
        if carried::any() {
            return Context::carrying(bindings);
        }
        Context {
            frame: Frame::with_map(bindings),
        }
    }

    /// A context with `bindings`, a snapshot of the current ones, carrying the span and
    /// OpenTelemetry context current here, of what is carried: [`current`](Self::current)
    /// where anything is. Out of line: nothing is, in most programs.
    #[cold]
    #[inline(never)]
    pub(crate) fn carrying(bindings: map::Map) -> Self {
        Context {
            frame: Frame::carrying(carried::recarry(bindings)),
        }
    }

    /// A context with these bindings (and what their map carries).
    #[cfg(feature = "tokio")]
    #[inline]
    pub(crate) fn from_map(map: map::Map) -> Self {
        Context {
            frame: Frame::with_map(map),
        }
    }

    /// Runs `f` with this context current and returns what `f` returns. What `f` sets
    /// stays in this context; the caller's context is restored when `f` returns and when it
    /// panics (the panic goes on).
    ///
    /// Taking `&mut self` makes entering a context that is already entered a compile error
    /// (Python raises `RuntimeError` at run time).
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{Context, ContextVar, Key, WithDefault};
    /// # #[allow(non_camel_case_types)] struct COUNT {}
    /// # impl Key for COUNT { type Value = u32; type Default = WithDefault; }
    /// # static COUNT: ContextVar<COUNT> = ContextVar::with_default("count", || 0);
    /// let mut ctx = Context::new();
    /// for _ in 0..3 {
    ///     ctx.run(|| { let _ = COUNT.set(COUNT.get() + 1); });
    /// }
    /// assert_eq!(ctx.get(&COUNT), Some(&3));
    /// assert_eq!(COUNT.get(), 0);
    /// ```
    ///
    /// # Futures
    ///
    /// `run` runs `f`, not what `f` returns. A future that `f` builds (an `async` block, a
    /// call to an `async fn`) does nothing until it is polled, and it is polled later, where
    /// it is awaited, in the context current there: none of it runs in this context, and what
    /// it sets never reaches it. To run a future in a context, use
    /// [`FutureExt::with_context`](crate::FutureExt::with_context). What `f` starts does take
    /// this context along: a task spawned with `contextvars::spawn` in `f` starts in a snapshot
    /// of it, and a `#[preserve_context]` function called in `f` captures it.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{Context, ContextVar, FutureExt, Key, NoDefault};
    /// # #[allow(non_camel_case_types)] struct USER {}
    /// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
    /// # static USER: ContextVar<USER> = ContextVar::new("user");
    /// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # runtime.block_on(async {
    /// let ctx = Context::new().with_value(&USER, "ann");
    ///
    /// // Not in `ctx`: `run` only builds the future, which is polled here, outside it.
    /// let built_in_ctx = ctx.clone().run(|| async { USER.get() });
    /// assert_eq!(built_in_ctx.await, None);
    ///
    /// // In `ctx`, on every poll.
    /// assert_eq!(async { USER.get() }.with_context(ctx).await, Some("ann"));
    /// # });
    /// ```
    #[inline]
    pub fn run<R>(&mut self, f: impl FnOnce() -> R) -> R {
        if self.carries() {
            return self.run_carrying(f);
        }
        let _entered = self.enter_bindings();
        f()
    }

    /// [`run`](Self::run) for a context that carries a span or OpenTelemetry's context.
    #[cold]
    #[inline(never)]
    fn run_carrying<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let _entered = self.enter();
        f()
    }

    /// Whether entering this context also enters a span or OpenTelemetry's context: the hot
    /// paths branch on it once, so that a context that carries nothing is entered as before.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub(crate) fn carries(&self) -> bool {
        self.frame.carries()
    }

    /// Makes this context's bindings current until the returned guard drops, leaving the span
    /// and OpenTelemetry context as they are: [`enter`](Self::enter) where it
    /// [`carries`](Self::carries) nothing.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub(crate) fn enter_bindings(&mut self) -> Entered<'_> {
        Entered::new(&mut self.frame)
    }

    /// Makes this context current until the returned guard drops, with the span and
    /// OpenTelemetry context it carries, if any, entered. [`run`](Self::run) is the closure
    /// form; a future wrapper is built on this.
    #[inline]
    pub(crate) fn enter(&mut self) -> Entering<'_> {
        // Entered before the bindings: once they are, this context's map is the thread's.
        let carried = self.carries().then(|| self.frame.map.carried().enter());
        Entering {
            carried: ManuallyDrop::new(carried),
            entered: Entered::new(&mut self.frame),
        }
    }

    /// [`enter`](Self::enter) for one poll of a future that runs in this context, which found
    /// the task polling it (see [`LastPoll::start`]): under no stamp, as [`enter`](Self::enter).
    #[inline]
    pub(crate) fn enter_for_poll_carrying(&mut self, poller: Poller) -> Entering<'_> {
        let carried = self.carries().then(|| self.frame.map.carried().enter());
        Entering {
            carried: ManuallyDrop::new(carried),
            entered: Entered::for_poll(&mut self.frame, poller),
        }
    }

    /// This context with `var` bound to `value`: the one-expression way to build a context
    /// with overrides without touching the caller's.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{Context, ContextVar, Key, NoDefault, WithDefault};
    /// # #[allow(non_camel_case_types)] struct REQUEST_ID {}
    /// # impl Key for REQUEST_ID { type Value = u64; type Default = NoDefault; }
    /// # static REQUEST_ID: ContextVar<REQUEST_ID> = ContextVar::new("request_id");
    /// # #[allow(non_camel_case_types)] struct USER {}
    /// # impl Key for USER { type Value = &'static str; type Default = WithDefault; }
    /// # static USER: ContextVar<USER> = ContextVar::with_default("user", || "guest");
    /// let seen = Context::current()
    ///     .with_value(&REQUEST_ID, 42)
    ///     .with_value(&USER, "ann")
    ///     .run(|| (REQUEST_ID.get(), USER.get()));
    /// assert_eq!(seen, (Some(42), "ann"));
    /// assert_eq!((REQUEST_ID.get(), USER.get()), (None, "guest"));
    /// ```
    #[must_use]
    pub fn with_value<K: Key>(mut self, var: &'static ContextVar<K>, value: K::Value) -> Self {
        if let Some(replaced) = self.frame.map.insert(var.leaf(value)) {
            // The replaced value belonged to this context: it is dropped inside it.
            self.run(|| drop(replaced));
        }
        self
    }

    /// The value bound to `var` in this context; defaults are not bindings.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{Context, ContextVar, Key, WithDefault};
    /// # #[allow(non_camel_case_types)] struct RETRIES {}
    /// # impl Key for RETRIES { type Value = u32; type Default = WithDefault; }
    /// # static RETRIES: ContextVar<RETRIES> = ContextVar::with_default("retries", || 3);
    /// assert_eq!(Context::new().get(&RETRIES), None);
    /// assert_eq!(Context::new().with_value(&RETRIES, 5).get(&RETRIES), Some(&5));
    /// ```
    #[must_use]
    pub fn get<K: Key, D: DefaultKind>(&self, var: &ContextVar<K, D>) -> Option<&K::Value> {
        self.frame
            .map
            .get(var.key())
            .map(|leaf| downcast::<K::Value>(&leaf.value))
    }

    /// Whether `var` is bound in this context.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{Context, ContextVar, Key, NoDefault};
    /// # #[allow(non_camel_case_types)] struct USER {}
    /// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
    /// # static USER: ContextVar<USER> = ContextVar::new("user");
    /// assert!(!Context::new().contains(&USER));
    /// assert!(Context::new().with_value(&USER, "ann").contains(&USER));
    /// ```
    #[must_use]
    pub fn contains<K: Key, D: DefaultKind>(&self, var: &ContextVar<K, D>) -> bool {
        self.get(var).is_some()
    }

    /// How many variables are bound in this context.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{Context, ContextVar, Key, NoDefault};
    /// # #[allow(non_camel_case_types)] struct USER {}
    /// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
    /// # static USER: ContextVar<USER> = ContextVar::new("user");
    /// assert_eq!(Context::new().with_value(&USER, "ann").len(), 1);
    /// ```
    #[must_use]
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether no variable is bound in this context.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::Context;
    /// assert!(Context::new().is_empty());
    /// ```
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// The bindings: each variable's name and its value, which formats with `Debug` where
    /// the variable's type has it (else as the type's name) and can be downcast to that type
    /// with [`ValueRef::downcast_ref`]. Defaults are not bindings, so they are not listed.
    ///
    /// # Order
    ///
    /// The order is unspecified: expect neither the order of the `set`s nor that of the names.
    /// It depends only on which variables are bound, so within one process two contexts
    /// holding the same variables list them in the same order (and so does `Debug`), whatever
    /// the order they were set in. It can change between runs, since it follows the order in
    /// which the process first used (read or set) each variable, and between versions of this
    /// crate. For a dump that reads the same every time, sort by name.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{Context, ContextVar, Key, NoDefault};
    /// # #[allow(non_camel_case_types)] struct USER {}
    /// # impl Key for USER { type Value = &'static str; type Default = NoDefault;
    /// #   fn fmt_value(v: &&'static str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { std::fmt::Debug::fmt(v, f) } }
    /// # static USER: ContextVar<USER> = ContextVar::new("user");
    /// # #[allow(non_camel_case_types)] struct PORT {}
    /// # impl Key for PORT { type Value = u16; type Default = NoDefault;
    /// #   fn fmt_value(v: &u16, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { std::fmt::Debug::fmt(v, f) } }
    /// # static PORT: ContextVar<PORT> = ContextVar::new("port");
    /// use contextvars::ValueRef;
    ///
    /// let ctx = Context::new().with_value(&USER, "ann").with_value(&PORT, 8080);
    ///
    /// // Sorted by name, so that the dump is the same in every run.
    /// let mut bindings: Vec<(&str, ValueRef<'_>)> = ctx.iter().collect();
    /// bindings.sort_by_key(|&(name, _)| name);
    ///
    /// // `Debug` text, as the variables' types format themselves.
    /// let text: Vec<String> = bindings.iter().map(|(name, value)| format!("{name}={value:?}")).collect();
    /// assert_eq!(text, ["port=8080", "user=\"ann\""]);
    ///
    /// // Typed values: downcast to the types the dump knows, `Debug` text for the others.
    /// fn render(value: ValueRef<'_>) -> String {
    ///     if let Some(port) = value.downcast_ref::<u16>() {
    ///         port.to_string()
    ///     } else if let Some(user) = value.downcast_ref::<&str>() {
    ///         (*user).to_owned()
    ///     } else {
    ///         format!("{value:?}")
    ///     }
    /// }
    /// let plain: Vec<String> = bindings.iter().map(|&(name, value)| format!("{name}={}", render(value))).collect();
    /// assert_eq!(plain, ["port=8080", "user=ann"]);
    /// ```
    #[must_use]
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            leaves: self.frame.map.iter(),
        }
    }

    /// A closure that runs `f` in a copy of this context (taken now) wherever and whenever it
    /// is called: the way into a thread pool or any executor. Like TC39's
    /// `AsyncContext.Snapshot.wrap` and Node's `AsyncResource.bind`.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{Context, ContextVar, Key, NoDefault};
    /// # #[allow(non_camel_case_types)] struct USER {}
    /// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
    /// # static USER: ContextVar<USER> = ContextVar::new("user");
    /// let _token = USER.set("ann");
    /// let job = Context::current().wrap(|| USER.get());
    /// let seen = std::thread::spawn(job).join().unwrap();
    /// assert_eq!(seen, Some("ann"));
    /// ```
    pub fn wrap<F: FnOnce() -> R, R>(&self, f: F) -> impl FnOnce() -> R + use<F, R> {
        self.clone().run_later(f)
    }

    /// `f`, to be run in this context wherever and whenever it is called: how the spawn
    /// helpers carry a snapshot into a task or thread.
    pub(crate) fn run_later<F: FnOnce() -> R, R>(mut self, f: F) -> impl FnOnce() -> R + use<F, R> {
        move || self.run(f)
    }

    /// Like [`wrap`](Self::wrap) for a closure called many times: each call runs in a fresh
    /// copy of this context, so nothing one call sets is seen by the next.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{Context, ContextVar, Key, WithDefault};
    /// # #[allow(non_camel_case_types)] struct HITS {}
    /// # impl Key for HITS { type Value = u32; type Default = WithDefault; }
    /// # static HITS: ContextVar<HITS> = ContextVar::with_default("hits", || 0);
    /// let mut handler = Context::new().wrap_mut(|| {
    ///     let hits = HITS.get() + 1;
    ///     let _ = HITS.set(hits);
    ///     hits
    /// });
    /// assert_eq!((handler(), handler()), (1, 1));
    /// ```
    pub fn wrap_mut<F: FnMut() -> R, R>(&self, mut f: F) -> impl FnMut() -> R + use<F, R> {
        let ctx = self.clone();
        move || ctx.clone().run(&mut f)
    }
}

impl Clone for Context {
    /// An independent copy (Python's `Context.copy()`): a new context with the same bindings.
    fn clone(&self) -> Self {
        Context {
            frame: self.frame.copy(),
        }
    }
}

impl Drop for Context {
    /// The values only this context holds are dropped inside it, so that their `Drop` may
    /// read and set context variables (what it sets is dropped with the rest). A context that
    /// shares its bindings with another (a snapshot nobody wrote to) only loses a reference.
    /// A context whose values all drop without running anyone's code (a `String`, a number,
    /// a `Vec<String>`) is let go of at once, without being entered, since nothing could tell
    /// the difference.
    #[inline]
    fn drop(&mut self) {
        if self.frame.map.may_drop_values() {
            self.drop_values();
        }
    }
}

/// A context (or what holds one) that may be dropped far from whoever owns its values: in a
/// worker's queue, a pool's, or by a worker after the request's caller went away. A panic of a
/// value's `Drop` there stays here, the panic hook having reported it, instead of unwinding the
/// worker or pool that happened to drop it, which would then fail every later job.
#[derive(Clone)]
pub(crate) struct DropContained<T>(Option<T>);

impl<T> DropContained<T> {
    pub(crate) fn new(value: T) -> Self {
        DropContained(Some(value))
    }

    /// The value, now its holder's to drop.
    pub(crate) fn into_inner(mut self) -> T {
        self.0.take().expect("taken only here, once")
    }
}

impl<T> Drop for DropContained<T> {
    fn drop(&mut self) {
        if let Some(value) = self.0.take() {
            // Nobody waits for this value: its panic has been printed by the panic hook, and
            // goes no further.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(value)));
        }
    }
}

/// A context kept by a future's wrapper between its polls, beside what the read cache knew of
/// it when its last poll ended (see [`LastPoll`]; while a poll runs, the record holds the
/// stamp of the frame that poll swapped out instead).
pub(crate) struct KeptContext {
    // Invariant: whoever changes or replaces `context` between polls forgets `last`
    // (`LastPoll::forget`), and `last` is only ever the record of this `context`.
    pub(crate) context: Context,
    pub(crate) last: LastPoll,
}

impl KeptContext {
    /// A context never polled: no record.
    pub(crate) fn new(context: Context) -> Self {
        KeptContext {
            context,
            last: LastPoll::default(),
        }
    }

    /// [`Context::enter_bindings`] for one poll of the future that runs in the context: `start`
    /// is what [`LastPoll::start`] found in the record just now (see [`Polled::new`]).
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub(crate) fn enter_for_poll(&mut self, start: PollStart) -> Polled<'_, KeptContext> {
        Polled::new(self, start)
    }
}

impl PollSlot for KeptContext {
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn parts(&mut self) -> (&mut Frame, &mut LastPoll) {
        (&mut self.context.frame, &mut self.last)
    }
}

impl Context {
    /// Out of line: most contexts dropped are snapshots that share their bindings. Where a
    /// value may run code as it goes, it goes inside the context, and inside the span the
    /// context carries, as code run in the context would: a `Drop` that logs logs in the
    /// span. OpenTelemetry's context is not attached for it: a context may be dropped inside
    /// OpenTelemetry's own code, where attaching would panic. What the context carries goes
    /// with its map's root, and the span is left once the values are gone.
    #[inline(never)]
    fn drop_values(&mut self) {
        if !self.frame.map.release_if_no_drop() {
            current::drop_values_inside(&mut self.frame);
        }
    }
}

impl Context {
    /// This context without the span and OpenTelemetry context it carries, if any.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn without_carried(mut self) -> Self {
        if self.frame.map.carried().is_some() {
            self.frame.map.set_carried(carried::Carried::NONE);
            self.frame.mark_carrying();
        }
        self
    }

    /// This context without the span it carries, if any (OpenTelemetry's context stays).
    #[cfg(all(feature = "tracing", feature = "hooks"))]
    pub(crate) fn without_span(mut self) -> Self {
        if let Some(rest) = self.frame.map.carried().without_span() {
            self.frame.map.set_carried(rest);
            self.frame.mark_carrying();
        }
        self
    }

    /// This context carrying OpenTelemetry's context `otel` (and no span) instead of what it
    /// carried: entering it attaches `otel`.
    #[cfg(all(feature = "opentelemetry", feature = "baggage"))]
    pub(crate) fn carrying_otel(mut self, otel: ::opentelemetry::Context) -> Self {
        self.frame.map.set_carried(carried::Carried::otel(otel));
        self.frame.mark_carrying();
        self
    }
}

/// A context entered by [`Context::enter`]; dropping it leaves the context, first what the
/// context carries (the span, OpenTelemetry's context), then its bindings.
pub(crate) struct Entering<'a> {
    /// Dropped by `Entering`'s `Drop`, before `entered` leaves the context.
    carried: ManuallyDrop<Option<carried::Entered>>,
    #[allow(dead_code)]
    entered: Entered<'a>,
}

impl Drop for Entering<'_> {
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn drop(&mut self) {
        if self.carried.is_some() {
            leave_carried(&mut self.carried);
        }
    }
}

/// Leaves what [`Context::enter`] entered of what the context carries (exits the span,
/// detaches OpenTelemetry's context); out of line, so that a poll without it stays small.
#[inline(never)]
fn leave_carried(carried: &mut ManuallyDrop<Option<carried::Entered>>) {
    drop(carried.take());
}

impl Default for Context {
    fn default() -> Self {
        Context::new()
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Context ")?;
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a Context {
    type Item = (&'static str, ValueRef<'a>);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// An iterator over a context's bindings, from [`Context::iter`], in the order it describes.
pub struct Iter<'a> {
    leaves: map::Iter<'a>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'static str, ValueRef<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        self.leaves
            .by_ref()
            .find(|leaf| !leaf.var.hidden())
            .map(|leaf| (leaf.var.name(), ValueRef { leaf }))
    }
}

impl fmt::Debug for Iter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter").finish_non_exhaustive()
    }
}

/// A bound value as [`Context::iter`] shows it.
///
/// Its `Debug` output is the variable's own: the value's `Debug` text where the variable's
/// type has one, else the type's name. [`downcast_ref`](Self::downcast_ref) gives the value
/// itself, typed, for code that knows (or tries) the type.
#[derive(Clone, Copy)]
pub struct ValueRef<'a> {
    leaf: &'a map::Leaf,
}

impl<'a> ValueRef<'a> {
    /// The value as a `T`, if it is one.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{Context, ContextVar, Key, NoDefault};
    /// # #[allow(non_camel_case_types)] struct PORT {}
    /// # impl Key for PORT { type Value = u16; type Default = NoDefault; }
    /// # static PORT: ContextVar<PORT> = ContextVar::new("port");
    /// let ctx = Context::new().with_value(&PORT, 8080);
    /// let (_, value) = ctx.iter().next().unwrap();
    /// assert_eq!(value.downcast_ref::<u16>(), Some(&8080));
    /// ```
    #[must_use]
    pub fn downcast_ref<T: Any>(&self) -> Option<&'a T> {
        self.leaf.value.as_any().downcast_ref::<T>()
    }
}

impl ValueRef<'_> {
    /// Whether the variable opted into logs (`#[context_var(log)]`, [`Key::LOG`]). Log
    /// integrations write only these: context often holds secrets.
    #[must_use]
    pub fn is_logged(&self) -> bool {
        self.leaf.var.log()
    }
}

impl fmt::Debug for ValueRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.leaf.var.fmt_value(self.leaf.value.as_any(), f)
    }
}

// ---------------------------------------------------------------------------------------------
// For the runtime hooks (feature `hooks`): a task's stored context is swapped in and out of the
// thread by `current::enter_owned`/`exit_owned`, which need its frame.
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
impl Context {
    /// This context's bindings, taken out whole: the context is left empty.
    pub(crate) fn take_map(&mut self) -> map::Map {
        std::mem::take(&mut self.frame.map)
    }
}

#[cfg(feature = "hooks")]
impl Context {
    /// The bindings this context holds while it is not entered.
    pub(crate) fn frame_mut(&mut self) -> &mut Frame {
        &mut self.frame
    }

    /// The span and OpenTelemetry context this context carries.
    pub(crate) fn carried(&self) -> &Carried {
        self.frame.map.carried()
    }
}
