//! Automatic flow: every task of a tokio runtime starts in a snapshot of its spawner's context,
//! however it was spawned.
//!
//! Python's `asyncio.create_task` and .NET's `Task.Run` copy the caller's context into every
//! new task. Without help, a tokio task gets a context only when you spawn it with
//! [`contextvars::spawn`](crate::spawn); a task spawned by a library (a server's connection
//! tasks, a pool's workers, `tower::buffer`'s worker, any `tokio::spawn` you forgot) has none.
//! tokio's runtime hooks close that gap: [`install`] sets four of them on a runtime
//! [`Builder`](https://docs.rs/tokio/1/tokio/runtime/struct.Builder.html), and from then on every task of that runtime, whether started by
//! `tokio::spawn`, `Handle::spawn` from a plain thread, a `JoinSet` or a third-party crate,
//! starts in a snapshot of the context that was current where it was spawned, for reading.
//!
//! # What flows, and what may be written where
//!
//! - **Reading**: every task reads the values its spawner had at the spawn, however it was
//!   spawned. Later sets by the spawner are invisible to it.
//! - **Writing** needs a context that the code entered itself: a task spawned with
//!   [`contextvars::spawn`](crate::spawn) (or `spawn_blocking`, `spawn_local`), a future
//!   wrapped with [`.in_current_context()`](crate::FutureExt::in_current_context) or
//!   [`.with_context(ctx)`](crate::FutureExt::with_context), the code inside
//!   [`scope`](crate::ContextVar::scope) / [`sync_scope`](crate::ContextVar::sync_scope) or
//!   [`Context::run`](crate::Context::run), and every request behind the tower layer
//!   `contextvars::tower::ContextLayer`. What is set there stays there, as always.
//! - A `set` in a task spawned with plain `tokio::spawn` fails (`set` panics, `try_set`
//!   returns [`SetError::Inherited`](crate::SetError::Inherited)), with a message that names
//!   these fixes. The reason is servers: a connection task is spawned with plain
//!   `tokio::spawn`, and one HTTP/1 keep-alive connection serves many requests, often of
//!   different users (a load balancer reuses its connections). Were the connection's inherited
//!   context writable, what one request's handler sets would be what the next request on that
//!   connection reads. Read-only, such a write fails loudly where it is made.
//! - So the layer is still what gives each request a context of its own: the hooks carry the
//!   values into every task a request spawns, the layer keeps requests apart.
//! - [`install_writable`] gives asyncio's rule instead (plain-spawned tasks may write to their
//!   snapshot): safe only where every server of the runtime runs behind `ContextLayer`.
//! - `install_without_spans` (feature `tracing`) keeps the `tracing` span out of what this
//!   runtime's tasks inherit, once `contextvars::tracing::carry_spans` is on.
//!
//! The hooks are an unstable tokio API: build with `RUSTFLAGS="--cfg tokio_unstable"` and the
//! `hooks` feature of `contextvars`. `#[contextvars::main]` and `#[contextvars::test]` are
//! `#[tokio::main]` and `#[tokio::test]` with the hooks installed.
//!
//! ```
//! # use context_core as contextvars;
//! # use contextvars::{ContextVar, Key, NoDefault};
//! # #[allow(non_camel_case_types)] struct USER {}
//! # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
//! # static USER: ContextVar<USER> = ContextVar::new("user");
//! let mut builder = tokio::runtime::Builder::new_multi_thread();
//! contextvars::hooks::install(builder.enable_all());
//! let runtime = builder.build().unwrap();
//!
//! runtime.block_on(async {
//!     let _user = USER.set("ann");
//!     // A plain `tokio::spawn`: the task reads a snapshot of the spawner's context...
//!     let child = tokio::spawn(async {
//!         let seen = USER.get();
//!         assert!(USER.try_set("bob").is_err()); // ...but does not write to it;
//!         // a context it enters itself is its own to write.
//!         let inner = USER.scope("bob", async { USER.get() }).await;
//!         (seen, inner)
//!     });
//!     assert_eq!(child.await.unwrap(), (Some("ann"), Some("bob")));
//!     assert_eq!(USER.get(), Some("ann"));
//! });
//! ```
//!
//! # Where no hook runs
//!
//! tokio calls no hook for `tokio::task::spawn_blocking`, for tasks of a `LocalSet`, for the
//! future given to `block_on`, or for the drops of futures still pending when a runtime shuts
//! down. There the usual rule holds: a tokio task without a context reads every variable as
//! unset (or its default) and cannot set one, so it never sees another task's values; the
//! `block_on` future uses the thread's own context. Use
//! [`contextvars::spawn_blocking`](crate::spawn_blocking) and
//! [`contextvars::spawn_local`](crate::spawn_local) to carry a context there.
//!
//! # Long-lived tasks: spawn them without inheriting
//!
//! A task keeps its snapshot, and every value in it, for as long as it lives. A pool's worker
//! or a background loop spawned lazily, during the first request that needs it, would carry
//! that request's user, tenant and trace ids for the rest of the process: wrong in every log
//! line it writes, and never freed. Start such tasks outside the caller's context with
//! [`spawn_without_context`], or wrap whatever constructor spawns them (a pool, a client, a
//! cache refresher) in [`suppress_flow`]:
//!
//! ```
//! # use context_core as contextvars;
//! # use contextvars::{ContextVar, Key, NoDefault};
//! # #[allow(non_camel_case_types)] struct USER {}
//! # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
//! # static USER: ContextVar<USER> = ContextVar::new("user");
//! use std::sync::OnceLock;
//! use tokio::task::JoinHandle;
//!
//! /// A pool started by whichever request first needs it.
//! struct Pool {
//!     worker: JoinHandle<()>,
//! }
//!
//! impl Pool {
//!     fn start() -> Pool {
//!         Pool { worker: tokio::spawn(async { /* serve jobs forever */ }) }
//!     }
//! }
//!
//! fn pool() -> &'static Pool {
//!     static POOL: OnceLock<Pool> = OnceLock::new();
//!     // Not `POOL.get_or_init(Pool::start)`: its worker would keep this request's values.
//!     POOL.get_or_init(|| contextvars::hooks::suppress_flow(Pool::start))
//! }
//!
//! # let mut builder = tokio::runtime::Builder::new_multi_thread();
//! # let runtime = contextvars::hooks::install(builder.enable_all()).build().unwrap();
//! # runtime.block_on(async {
//! let _user = USER.set("ann"); // inside a request
//! let _ = pool();
//!
//! // The hazard, side by side with the fix:
//! let inherits = tokio::spawn(async { USER.get() });
//! let owns_nothing = contextvars::hooks::suppress_flow(|| tokio::spawn(async { USER.get() }));
//! assert_eq!(inherits.await.unwrap(), Some("ann"));
//! assert_eq!(owns_nothing.await.unwrap(), None);
//! # });
//! ```
//!
//! # Applications with hooks of their own
//!
//! A runtime has one callback of each kind: setting one replaces the other. An application
//! that already uses tokio's hooks calls [`on_task_spawn`], [`on_before_task_poll`],
//! [`on_after_task_poll`] and [`on_task_terminate`] from its own, in the same places;
//! [`install`] is nothing more than that.
//!
//! # Cost
//!
//! Each spawn takes a snapshot (one reference-count increment) and stores it in a table keyed
//! by task id, split in shards under uncontended locks; each task's end removes its entry. A
//! task's context is entered only when a poll first uses it (a read, a write, a snapshot, a
//! spawn): a poll that uses none costs two thread-local writes, one that does takes a lock on
//! the way in and on the way out. On a current-thread runtime whose tasks hold 8 variables,
//! that is 65 instructions more per poll than without the hooks for a poll that uses no
//! variable, 295 more than a task spawned by [`contextvars::spawn`](crate::spawn) for a poll
//! that reads one (whose read cache outlives the poll; a hooked task's does not), and 1.19
//! times the instructions of a bare `tokio::spawn` + await
//! (`benches/RESULTS.md` in the repository, measured by `scripts/bench-hooks`).
//! [`stored_contexts`] tells how many entries there are.
//!
//! Once spans or OpenTelemetry's context are carried (`contextvars::tracing::carry_spans`,
//! `contextvars::opentelemetry::carry_context`), every poll enters its task's context at once
//! instead, and with it the span the task was spawned in: an event logged by the task touches
//! no variable, so nothing would enter it later. Each poll then takes the lock on the way in
//! and out, as a poll that uses its context does.

mod table;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::runtime::{Builder, TaskMeta};
use tokio::task::{Id, JoinHandle};

use crate::carried::{self, Carried};
use crate::context::Context;
use crate::current;
use crate::future::FutureExt;
use table::Table;

/// Installs the four hooks on `builder`: every task of the runtime it builds starts in a
/// snapshot of its spawner's context, taken at the spawn.
///
/// It replaces any `on_task_spawn`, `on_before_task_poll`, `on_after_task_poll` and
/// `on_task_terminate` callback set before (a runtime has one of each); an application that
/// needs its own calls the hook functions of this module from them instead.
///
/// ```
/// # use context_core as contextvars;
/// # use contextvars::{ContextVar, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct TENANT {}
/// # impl Key for TENANT { type Value = u32; type Default = NoDefault; }
/// # static TENANT: ContextVar<TENANT> = ContextVar::new("tenant");
/// let runtime = contextvars::hooks::install(&mut tokio::runtime::Builder::new_current_thread())
///     .build()
///     .unwrap();
/// let _tenant = TENANT.set(7);
/// // `Handle::spawn` from a plain thread: the task inherits that thread's context.
/// let task = runtime.handle().spawn(async { TENANT.get() });
/// assert_eq!(runtime.block_on(task).unwrap(), Some(7));
/// ```
pub fn install(builder: &mut Builder) -> &mut Builder {
    builder
        .on_task_spawn(on_task_spawn)
        .on_before_task_poll(on_before_task_poll)
        .on_after_task_poll(on_after_task_poll)
        .on_task_terminate(on_task_terminate)
}

/// [`install`], with asyncio's rule instead of the read-only one: every task spawned with
/// plain `tokio::spawn` may also set variables in the snapshot it inherited, as if it had been
/// spawned with [`contextvars::spawn`](crate::spawn).
///
/// **Safe only where every server of the runtime runs behind
/// `contextvars::tower::ContextLayer`** (and every middleware that sets variables inside it).
/// A server's connection task is spawned with plain `tokio::spawn`, and one HTTP/1 keep-alive
/// connection serves many requests, often of different users (a load balancer reuses its
/// upstream connections): without the layer, what the first request's handler sets is what
/// the second request reads. With [`install`], that set fails loudly instead.
///
/// **A value such a task sets is dropped after its output is handed over.** The hooks see a
/// task only around its polls and at its end, after tokio has given its output to the
/// `JoinHandle`, so a value whose `Drop` panics at that end is reported by the panic hook and
/// nowhere else: the `JoinHandle` gives the task's output, not `JoinError::Panic`. A task
/// spawned with [`contextvars::spawn`](crate::spawn) drops its values inside itself before
/// its output is handed over, and its `JoinHandle` gives the panic.
///
/// ```
/// # use context_core as contextvars;
/// # use contextvars::{ContextVar, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct USER {}
/// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
/// # static USER: ContextVar<USER> = ContextVar::new("user");
/// let runtime = contextvars::hooks::install_writable(&mut tokio::runtime::Builder::new_current_thread())
///     .build()
///     .unwrap();
/// runtime.block_on(async {
///     let child = tokio::spawn(async {
///         let _ = USER.set("bob"); // allowed: the task's inherited snapshot is its own
///         USER.get()
///     });
///     assert_eq!(child.await.unwrap(), Some("bob"));
///     assert_eq!(USER.get(), None);
/// });
/// ```
pub fn install_writable(builder: &mut Builder) -> &mut Builder {
    install(builder).on_task_spawn(on_task_spawn_writable)
}

/// [`install`], for a runtime whose tasks do not take their spawner's `tracing` span along,
/// even once `contextvars::tracing::carry_spans` is on: each task still starts in a snapshot
/// of its spawner's context (its variables, and OpenTelemetry's context where that is
/// carried), without the span. The spawn helpers (`contextvars::spawn`, …) still carry it,
/// on this runtime too.
///
/// Use it for a runtime you watch with tokio-console, whose task spans would otherwise each
/// be entered inside the spawner's span, and keep it open until the task ends; and for one
/// whose tasks outlive the code that spawns them (a pool's workers, a background loop
/// started by the first request), which would otherwise log under, and keep open, the span
/// of whoever spawned them first.
///
/// ```
/// # use context_core as contextvars;
/// // `contextvars::tracing::carry_spans()` was called at start-up: the spawn helpers, the
/// // tower layer and the tasks of other hooked runtimes carry spans; this runtime's tasks
/// // do not.
/// let runtime =
///     contextvars::hooks::install_without_spans(&mut tokio::runtime::Builder::new_multi_thread())
///         .build()
///         .unwrap();
/// # let _ = runtime;
/// ```
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
pub fn install_without_spans(builder: &mut Builder) -> &mut Builder {
    install(builder).on_task_spawn(on_task_spawn_without_spans)
}

/// [`on_task_spawn`] for [`install_without_spans`]: the task's snapshot does not carry the
/// spawner's span.
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
#[inline]
pub fn on_task_spawn_without_spans(meta: &TaskMeta<'_>) {
    store_spawner_context::<false>(meta, false);
}

/// The spawn hook: stores a snapshot of the context current here (the spawner's) for the
/// new task. tokio calls it on the spawner's thread, before the task can run.
///
/// Call it from your own `on_task_spawn` callback if you have one:
///
/// ```
/// # use context_core as contextvars;
/// let mut builder = tokio::runtime::Builder::new_multi_thread();
/// contextvars::hooks::install(&mut builder).on_task_spawn(|meta| {
///     contextvars::hooks::on_task_spawn(meta);
///     // ... the application's own spawn accounting
/// });
/// ```
///
/// The task may read its snapshot, not write to it: see [`SetError::Inherited`]. Call
/// [`on_task_spawn_writable`] instead for asyncio's rule.
///
/// [`SetError::Inherited`]: crate::SetError::Inherited
#[inline]
pub fn on_task_spawn(meta: &TaskMeta<'_>) {
    store_spawner_context::<true>(meta, false);
}

/// [`on_task_spawn`] for [`install_writable`]: the task may also write to its snapshot.
#[inline]
pub fn on_task_spawn_writable(meta: &TaskMeta<'_>) {
    store_spawner_context::<true>(meta, true);
}

/// `SPAN`: whether the task's snapshot keeps the spawner's span (a constant, so that the
/// usual hooks pay nothing for the choice).
#[inline]
fn store_spawner_context<const SPAN: bool>(meta: &TaskMeta<'_>, writable: bool) {
    let id = meta.id();
    // On a runtime already shut down, tokio ends the task (and calls the terminate hook)
    // before this hook: storing a context now would keep it forever.
    let ended = ENDED_UNSTORED
        .try_with(|ended| {
            if ended.get() == Some(id) {
                ended.set(None);
                true
            } else {
                false
            }
        })
        .unwrap_or(false);
    if ended {
        return;
    }
    let mut context = spawner_context();
    #[cfg(feature = "tracing")]
    if !SPAN {
        context = context.without_span();
    }
    if !writable {
        current::make_read_only(context.frame_mut());
    }
    let slot = Slot {
        context,
        outer_owner: None,
        polling: false,
        ended: false,
    };
    // Task ids are never reused: nothing is stored for `id` yet.
    shard(id).insert_new(id, slot);
}

/// A snapshot of the spawner's context. A spawner that is a task whose poll has not used its
/// context yet (the hooks enter it lazily) has it still in the table: copying it from there
/// saves entering it now and leaving it after the poll, two more locks per spawn.
fn spawner_context() -> Context {
    // Only if the code spawning is that task: a task without hooks polled inside its poll (a
    // `LocalSet`, a runtime driven in `block_in_place`) must not copy its context.
    // (Never while the span or OpenTelemetry's context is carried: the snapshot must take the
    // one current here, which `Context::current()` does.)
    if let Some(spawner) = current::pending_task()
        .filter(|&task| tokio::task::try_id() == Some(task) && !carried::any())
    {
        let mut shard = shard(spawner);
        match shard.get_mut(spawner) {
            // Not stored: the spawner has no context, and `Context::current()` would give
            // an empty one.
            None => return Context::new(),
            // Between polls, the slot holds the task's own context.
            Some(slot) if !slot.polling => return slot.context.clone(),
            // Still out on another worker, for a moment (see `wait_and_enter`): enter it the
            // usual way, which waits for it.
            Some(_) => {}
        }
    }
    Context::current()
}

/// The before-poll hook: makes the polled task's context current on this thread, saving
/// what was current, which [`on_after_task_poll`] restores. A task without a stored context
/// (spawned before the hooks were installed, say) is left as it is: it has no context.
///
/// Install it together with [`on_after_task_poll`], never alone: a poll that finds the task's
/// context still out on another worker waits for that worker's after-poll hook to bring it
/// back (see below), and without that hook it would wait forever.
///
/// The context is entered when the task first uses it during the poll (a read, a write, a
/// snapshot, a spawn): a poll that uses none costs no lock.
#[inline]
pub fn on_before_task_poll(meta: &TaskMeta<'_>) {
    if carried::any() {
        // A task's context may carry a span (or OpenTelemetry's context), which must be
        // entered for the whole poll: an event logged in it does not touch the context, so
        // nothing would enter it later.
        enter_now(meta.id());
    } else {
        current::enter_later(meta.id(), enter_now);
    }
}

/// Enters `id`'s context now: what [`on_before_task_poll`] defers. The span and
/// OpenTelemetry context it carries are entered after the shard is unlocked (the subscriber's
/// code runs then), and left by [`on_after_task_poll`], on this thread.
fn enter_now(id: Id) {
    let found = match try_enter(id) {
        Ok(found) => found,
        Err(StillOut) => wait_and_enter(id),
    };
    if let Some(found) = found {
        let entered = found.enter();
        let _ = CARRIED.try_with(|stack| stack.borrow_mut().push((id, entered)));
    }
}

/// Leaves what [`enter_now`] entered of what `id`'s context carries, if anything.
#[inline]
fn leave_carried(id: Id) {
    if !carried::any() {
        return;
    }
    let carried = CARRIED
        .try_with(|stack| {
            let mut stack = stack.borrow_mut();
            match stack.last() {
                Some((task, _)) if *task == id => stack.pop(),
                _ => None,
            }
        })
        .ok()
        .flatten();
    // Exited with the stack released: the subscriber's code runs now.
    drop(carried);
}

/// A task's context still out on another worker, for a moment (see [`wait_and_enter`]).
struct StillOut;

/// Enters `id`'s context, unless it is still out on another worker; what it carries (a span,
/// OpenTelemetry's context) is for the caller to enter once the shard is unlocked.
#[inline]
fn try_enter(id: Id) -> Result<Option<Carried>, StillOut> {
    let mut shard = shard(id);
    match shard.get_mut(id) {
        // No context stored: the task has none.
        None => Ok(None),
        Some(slot) if !slot.polling => {
            let carried = slot.context.carried();
            let found = carried.is_some().then(|| carried.clone());
            if let Some(outer_owner) = current::enter_owned(slot.context.frame_mut(), id) {
                slot.outer_owner = outer_owner;
                slot.polling = true;
                Ok(found)
            } else {
                Ok(None)
            }
        }
        Some(_) => Err(StillOut),
    }
}

/// tokio hands a task back to the scheduler at the end of its poll, before the after-poll
/// hook runs: woken meanwhile, it can be polled on another worker while the first still holds
/// its context, for the moment it takes to call that hook. Waits for it, with the shard
/// unlocked so that the hook can run.
#[cold]
#[inline(never)]
fn wait_and_enter(id: Id) -> Option<Carried> {
    let mut waited = 0_u32;
    loop {
        waited += 1;
        if waited < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
        if let Ok(found) = try_enter(id) {
            return found;
        }
    }
}

/// The after-poll hook: moves the task's context back out of the thread, with what the poll
/// set, and restores what [`on_before_task_poll`] found there. If the task ended during the
/// poll, its context is dropped.
#[inline]
pub fn on_after_task_poll(meta: &TaskMeta<'_>) {
    let id = meta.id();
    if current::cancel_later(id) {
        // The poll never used the context: it was never entered.
        return;
    }
    leave_carried(id);
    let mut shard = shard(id);
    let Some(slot) = shard.get_mut(id) else {
        return;
    };
    if !slot.polling {
        return;
    }
    current::exit_owned(slot.context.frame_mut(), slot.outer_owner);
    slot.polling = false;
    if slot.ended {
        remove_ended(shard, id);
    }
}

/// Drops the context of a task that ended during the poll that just finished: with the lock
/// released and the thread's context restored, since the values' `Drop` may read variables or
/// spawn tasks.
#[cold]
#[inline(never)]
fn remove_ended(mut shard: MutexGuard<'_, Table<Slot>>, id: Id) {
    let ended = shard.remove(id);
    drop(shard);
    drop_ended(ended);
}

/// Drops an ended task's context. tokio calls the poll hooks where a panic is not caught
/// (it aborts a multi-thread runtime's process, and escapes `block_on` on a current-thread
/// one), and the task has already handed its output to its `JoinHandle`, so there is no one
/// left to report a panic of a value's `Drop` to: every value is still dropped, the panic
/// hook prints the panic, and it goes no further. (The values of a task's own context, a
/// `contextvars::spawn` task's or a request's, are dropped before it ends, where a panic is
/// the task's: only what a task inherited, after its owner let go, can reach here.)
fn drop_ended(ended: Option<Slot>) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(ended)));
}

/// The terminate hook: drops the ended task's stored context (at once, or, if the task ended
/// during a poll, when the poll hook that follows takes it out of the thread).
#[inline]
pub fn on_task_terminate(meta: &TaskMeta<'_>) {
    let id = meta.id();
    let ended = {
        let mut shard = shard(id);
        match shard.position(id) {
            Some(index) if shard.at(index).polling => {
                shard.at(index).ended = true;
                None
            }
            Some(index) => shard.remove_at(index),
            None => {
                // Either a task no hook stored (a blocking task), or one ended before its spawn
                // hook ran (spawned on a runtime that has shut down), which must then store
                // nothing. Both happen on this thread; the spawn hook, if any, comes next.
                let _ = ENDED_UNSTORED.try_with(|ended| ended.set(Some(id)));
                None
            }
        }
    };
    drop_ended(ended);
}

/// How many tasks' contexts the hooks hold right now, across all runtimes: one per task that
/// was spawned on a runtime with the hooks and has not ended. A diagnostic (for leak checks
/// in tests, or a gauge); it locks every shard of the table in turn. An ended task's context
/// leaves the count first and its values are dropped a moment later, on the thread that
/// ended it: a test that counts drops waits for them too.
///
/// ```standalone_crate
/// # use context_core as contextvars;
/// let runtime = contextvars::hooks::install(&mut tokio::runtime::Builder::new_current_thread())
///     .build()
///     .unwrap();
/// let before = contextvars::hooks::stored_contexts();
/// let task = runtime.spawn(std::future::pending::<()>());
/// assert_eq!(contextvars::hooks::stored_contexts(), before + 1);
/// task.abort();
/// drop(runtime); // the aborted task ends: its context goes
/// assert_eq!(contextvars::hooks::stored_contexts(), before);
/// ```
#[must_use]
pub fn stored_contexts() -> usize {
    STORE.iter().map(|shard| shard.lock().len()).sum()
}

/// Runs `f` with an empty context current, so that the tasks (and [`crate::thread`] threads)
/// it spawns inherit nothing from the caller: .NET's `ExecutionContext.SuppressFlow`. Wrap
/// with it whatever starts long-lived tasks (a pool, a client with a background connection,
/// a cache refresher), most of all when it runs lazily inside a request. `f` itself cannot
/// read the caller's values either; it may set its own, which its tasks then inherit.
///
/// Where spans or OpenTelemetry's context are carried (`contextvars::tracing::carry_spans`,
/// `contextvars::opentelemetry::carry_context`), the tasks and threads started on this thread
/// while `f` runs carry neither, not even a span `f` enters itself: a long-lived task would
/// otherwise keep the request's span open and log in it for as long as it runs. Enter a span
/// of its own inside such a task. (That holds for whatever runs on the thread meanwhile: keep
/// `f` to the spawning, not a `block_on` that serves other tasks.)
///
/// ```
/// # use context_core as contextvars;
/// # use contextvars::{ContextVar, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct USER {}
/// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
/// # static USER: ContextVar<USER> = ContextVar::new("user");
/// # let runtime = contextvars::hooks::install(&mut tokio::runtime::Builder::new_current_thread())
/// #     .build()
/// #     .unwrap();
/// # runtime.block_on(async {
/// let _user = USER.set("ann");
/// let worker = contextvars::hooks::suppress_flow(|| tokio::spawn(async { USER.get() }));
/// assert_eq!(worker.await.unwrap(), None);
/// # });
/// ```
pub fn suppress_flow<R>(f: impl FnOnce() -> R) -> R {
    let _suppressed = crate::carried::suppress();
    Context::new().run(f)
}

/// `tokio::spawn` without inheriting: on a runtime with the hooks the task starts in an empty
/// context of its own (which it may set), whatever the caller's. For long-lived tasks; see
/// [`suppress_flow`] for why.
///
/// # Panics
/// As `tokio::spawn`: when called outside a tokio runtime.
///
/// ```
/// # use context_core as contextvars;
/// # use contextvars::{ContextVar, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct USER {}
/// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
/// # static USER: ContextVar<USER> = ContextVar::new("user");
/// # let runtime = contextvars::hooks::install(&mut tokio::runtime::Builder::new_current_thread())
/// #     .build()
/// #     .unwrap();
/// # runtime.block_on(async {
/// let _user = USER.set("ann");
/// let background = contextvars::hooks::spawn_without_context(async {
///     let _ = USER.set("maintenance"); // its own context: it can set
///     USER.get()
/// });
/// assert_eq!(background.await.unwrap(), Some("maintenance"));
/// # });
/// ```
#[track_caller]
pub fn spawn_without_context<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    // Wrapped in a context of its own, which it may write to: an inherited one (even empty)
    // would be read-only.
    suppress_flow(|| tokio::spawn(future.with_context(Context::new())))
}

/// What the hooks keep for one task.
struct Slot {
    /// The task's context between polls; during a poll, what was current on the polling
    /// thread before it (the two are swapped).
    context: Context,
    /// During a poll, the owner of the frame that `context` then holds.
    outer_owner: Option<Id>,
    /// Between the two poll hooks.
    polling: bool,
    /// The task ended during the current poll: the after-poll hook removes the slot.
    ended: bool,
}

thread_local! {
    /// The last task that ended on this thread with no slot stored, so that its spawn hook,
    /// if it comes next, stores none.
    static ENDED_UNSTORED: Cell<Option<Id>> = const { Cell::new(None) };

    /// What the polls under way on this thread entered of what their tasks' contexts carry,
    /// innermost last: a span is exited, and an OpenTelemetry context detached, on the
    /// thread that entered it (the guard is not `Send`, so it cannot wait in the table).
    static CARRIED: RefCell<Vec<(Id, carried::Entered)>> = const { RefCell::new(Vec::new()) };
}

/// Enough shards that two cores (or a few dozen) rarely want the same lock.
const SHARDS: usize = 64;

/// One shard of the table, on a cache line (two, for adjacent-line prefetch) of its own.
#[repr(align(128))]
struct Shard(Mutex<Table<Slot>>);

static STORE: [Shard; SHARDS] = [const { Shard(Mutex::new(Table::new())) }; SHARDS];

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Table<Slot>> {
        // Nothing panics while a shard is locked; if something did, the table is still whole.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The locked shard that holds `id`.
#[inline]
fn shard(id: Id) -> MutexGuard<'static, Table<Slot>> {
    // Bits that a shard's own table (which starts its probes from the top bits) leaves alone,
    // so that one shard's ids still spread over its buckets.
    let index = usize::try_from(table::fibonacci(id) >> 32).unwrap_or_default() % SHARDS;
    STORE[index].lock()
}
