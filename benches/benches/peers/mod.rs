//! The other context-propagation crates, set up the way a program using each would set them up,
//! for the side-by-side benchmarks of SPEC S8: `opentelemetry::Context`, `dcontext`,
//! `execution_context` and `tokio-inherit-task-local`.
//!
//! Every peer gets the scenario `contextvars` gets in `contextvars_benches::context_with`: a
//! `u64` request id bound to 7 among 8 or 1,000 values. Each operation is written once here, as
//! the natural and fastest call each crate's API offers for it, and used by the criterion
//! benchmarks (`context.rs`, `futures.rs`) and the callgrind counter (`instructions.rs`) alike;
//! [`verify`] checks once that each of them does its work (reads the value that was bound,
//! restores what it replaced), outside any timed loop.
//!
//! Shared by several bench targets, each of which uses part of it.
#![allow(dead_code)]

use std::future::Future;
use std::hint::black_box;
use std::sync::Once;
use std::time::{Duration, Instant};

use contextvars_benches::{REQUEST_ID, context_with};
use dcontext::{AttachGuard, ContextKey, ContextSnapshot, RegistryBuilder};
use execution_context::{ExecutionContext, FlowLocal};
use opentelemetry::Context as OtelContext;
use tokio_inherit_task_local::{FutureInheritTaskLocal, InheritableLocalKey};

/// The crates measured beside `contextvars`, for the operations every one of them has a way
/// to do inside a context of its own: enter it, then run the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    Contextvars,
    Opentelemetry,
    Dcontext,
    ExecutionContext,
    InheritTaskLocal,
}

/// Runs `f` inside `peer`'s context with `n` values bound, the request id (7) among them.
pub(crate) fn enter<R>(peer: Peer, n: usize, f: impl FnOnce() -> R) -> R {
    match peer {
        Peer::Contextvars => context_with(n).run(f),
        Peer::Opentelemetry => {
            let _guard = otel_context_with(n).attach();
            f()
        }
        Peer::Dcontext => {
            let _guard = dcontext_enter(n);
            f()
        }
        Peer::ExecutionContext => ec_context_with(n).run(f),
        Peer::InheritTaskLocal => inherit_scope(n, f),
    }
}

/// Expands `[body]` once per token that follows, each copy in a block of its own: items
/// declared in the body (a type, a `static`) are then distinct items, as that many
/// declarations in a program are.
macro_rules! each {
    (@one [$($body:tt)*] $_n:tt) => {
        { $($body)* }
    };
    ($body:tt $($n:tt)*) => {
        $( each!(@one $body $n); )*
    };
}

/// Declares `fn fillers() -> &'static [peers::Filler]` at the root of a bench target, with as
/// many fillers as its largest context needs: `declare_fillers!(1000)` (999, and one spare)
/// where 1,000-value contexts are measured, `declare_fillers!(7)` elsewhere. Each filler costs
/// build time (opentelemetry needs a type of its own per value): about 7 s per 1,000.
macro_rules! declare_fillers {
    (@filler $fillers:ident) => {
        #[allow(dead_code)] // read through `TypeId` only
        struct OtelFiller(u64);
        fn otel(cx: &::opentelemetry::Context, value: u64) -> ::opentelemetry::Context {
            cx.with_value(OtelFiller(value))
        }
        ::execution_context::flow_local!(static FLOW: u64 = 0);
        ::tokio_inherit_task_local::inheritable_task_local!(static INHERIT: u64);
        $fillers.push(peers::Filler::new(otel, &FLOW, &INHERIT, $fillers.len()));
    };
    (@declare $fillers:ident $($each:tt)*) => {
        /// The values that fill the peers' contexts (`peers::declare_fillers`).
        fn fillers() -> &'static [peers::Filler] {
            static FILLERS: ::std::sync::OnceLock<Vec<peers::Filler>> =
                ::std::sync::OnceLock::new();
            FILLERS.get_or_init(|| {
                let mut $fillers = Vec::new();
                $($each)*
                $fillers
            })
        }
    };
    (1000) => {
        declare_fillers!(@declare fillers
            each!([each!([each!([declare_fillers!(@filler fillers);] 0 1 2 3 4 5 6 7 8 9);]
                0 1 2 3 4 5 6 7 8 9);] 0 1 2 3 4 5 6 7 8 9);
        );
    };
    (7) => {
        declare_fillers!(@declare fillers
            each!([declare_fillers!(@filler fillers);] 0 1 2 3 4 5 6);
        );
    };
}

/// One of the values that fill a peer's context: each crate names a value its own way (a type
/// for opentelemetry, a `static` key for the others, a string for dcontext). A bench target
/// declares its own with `declare_fillers!`.
pub(crate) struct Filler {
    /// Adds this filler (a type of its own) to an opentelemetry context.
    otel: fn(&OtelContext, u64) -> OtelContext,
    /// An `execution_context` flow local of its own.
    flow: &'static FlowLocal<u64>,
    /// A `tokio-inherit-task-local` key of its own.
    inherit: &'static InheritableLocalKey<u64>,
    /// A dcontext key.
    dcontext: &'static str,
}

impl Filler {
    pub(crate) fn new(
        otel: fn(&OtelContext, u64) -> OtelContext,
        flow: &'static FlowLocal<u64>,
        inherit: &'static InheritableLocalKey<u64>,
        index: usize,
    ) -> Self {
        Self {
            otel,
            flow,
            inherit,
            dcontext: Box::leak(format!("filler{index}").into_boxed_str()),
        }
    }
}

/// The fillers of the bench target, `n - 1` of them for a context of `n` values.
///
/// # Panics
/// If the bench target declared fewer (`declare_fillers!`).
fn fillers_for(n: usize) -> &'static [Filler] {
    let fillers = crate::fillers();
    assert!(
        n - 1 <= fillers.len(),
        "{n} values need `declare_fillers!(1000)` in this bench target"
    );
    &fillers[..n - 1]
}

/// Whether this bench target has the fillers of a context of `n` values.
pub(crate) fn can_bind(n: usize) -> bool {
    n - 1 <= crate::fillers().len()
}

// ---------------------------------------------------------------------------------------------
// opentelemetry: values keyed by type in an immutable `Context`; `attach` makes one current.

/// The request id in an opentelemetry `Context` (values are found by their type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OtelRequestId(pub(crate) u64);

/// An opentelemetry context with `n` values, [`OtelRequestId`] (7) among them.
pub(crate) fn otel_context_with(n: usize) -> OtelContext {
    let mut cx = OtelContext::new().with_value(OtelRequestId(7));
    for (value, filler) in (0_u64..).zip(fillers_for(n)) {
        cx = (filler.otel)(&cx, value);
    }
    assert!(
        format!("{cx:?}").contains(&format!("entries count: {n},")),
        "{n} distinct values: {cx:?}"
    );
    cx
}

/// `get` as most code writes it: a clone of the current context, then a lookup.
#[inline]
pub(crate) fn otel_get_current() -> Option<u64> {
    OtelContext::current().get::<OtelRequestId>().map(|id| id.0)
}

/// `get` without the clone, the fast path opentelemetry documents.
#[inline]
pub(crate) fn otel_get_map_current() -> Option<u64> {
    OtelContext::map_current(|cx| cx.get::<OtelRequestId>().map(|id| id.0))
}

/// `set` + `reset`: a context with the new value, attached, and detached by its guard.
#[inline]
pub(crate) fn otel_set_reset(value: u64) {
    drop(OtelContext::current_with_value(OtelRequestId(value)).attach());
}

/// Running in a held context: what opentelemetry's own `WithContext` does on every poll.
#[inline]
pub(crate) fn otel_run(cx: &OtelContext) {
    let guard = cx.clone().attach();
    black_box(());
    drop(guard);
}

// ---------------------------------------------------------------------------------------------
// dcontext: a registry of named, serializable keys; a thread-local store of scopes.

/// The request id as a dcontext typed key.
pub(crate) static DC_REQUEST_ID: ContextKey<u64> = ContextKey::new("request_id");

/// Registers the keys of the 8-value context (dcontext needs keys registered to carry them in
/// snapshots), once per process.
///
/// Only those 8: dcontext's `push_scope` walks every registered key (looking for the ones
/// marked `cached`), so registering the 1,000 fillers too would slow down every scope of the
/// 8-value benchmarks. The 1,000-value context needs no registration: `set`, `get` and
/// `capture` work on unregistered keys; only turning a snapshot back into a store drops them.
fn dcontext_init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let mut builder = RegistryBuilder::new();
        DC_REQUEST_ID.register_on(&mut builder);
        for filler in fillers_for(8) {
            builder.register::<u64>(filler.dcontext);
        }
        dcontext::initialize(builder);
    });
}

/// Enters a fresh dcontext store with `n` values set, the request id (7) among them; the
/// guard leaves it.
pub(crate) fn dcontext_enter(n: usize) -> AttachGuard {
    dcontext_init();
    let guard = dcontext::attach_snapshot(ContextSnapshot::empty());
    DC_REQUEST_ID.set(7);
    for (value, filler) in (0_u64..).zip(fillers_for(n)) {
        dcontext::set_context_variable(filler.dcontext, value);
    }
    guard
}

/// A dcontext snapshot (`capture`) of a context with 8 values.
pub(crate) fn dcontext_with(n: usize) -> ContextSnapshot {
    let _guard = dcontext_enter(n);
    dcontext::capture()
}

/// `set` + `reset`: dcontext rolls values back by scope, so a scope around the `set`.
#[inline]
pub(crate) fn dcontext_set_reset(value: u64) {
    let scope = dcontext::push_scope("request");
    DC_REQUEST_ID.set(value);
    drop(scope);
}

/// Running in a held snapshot: attach it (a store is made from it), detach.
#[inline]
pub(crate) fn dcontext_run(snapshot: &ContextSnapshot) {
    let guard = dcontext::attach_snapshot(snapshot.clone());
    black_box(());
    drop(guard);
}

// ---------------------------------------------------------------------------------------------
// execution_context: .NET-style flow locals in a thread's current `ExecutionContext`.

execution_context::flow_local!(static EC_REQUEST_ID_LOCAL: u64 = 0);

/// The request id as an `execution_context` flow local.
pub(crate) static EC_REQUEST_ID: &FlowLocal<u64> = &EC_REQUEST_ID_LOCAL;

/// An execution context with `n` flow locals set, the request id (7) among them.
///
/// Made on a thread of its own: `FlowLocal::set` changes the calling thread's current context
/// for good (the crate has no scope to leave), and `ExecutionContext::run` in the current
/// context itself is a plain call, so there is nothing to restore it with.
pub(crate) fn ec_context_with(n: usize) -> ExecutionContext {
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                EC_REQUEST_ID.set(7);
                for (value, filler) in (0_u64..).zip(fillers_for(n)) {
                    filler.flow.set(value);
                }
                ExecutionContext::capture()
            })
            .join()
            .expect("the context is made")
    })
}

/// `get`: a flow local hands out a shared box of its value.
#[inline]
pub(crate) fn ec_get() -> u64 {
    *EC_REQUEST_ID.get()
}

/// `set` + `reset`: the crate has no reset, nor a scope that restores (see
/// [`ec_context_with`]), so the old value is set back.
#[inline]
pub(crate) fn ec_set_reset(value: u64) {
    let old = *EC_REQUEST_ID.get();
    EC_REQUEST_ID.set(value);
    EC_REQUEST_ID.set(old);
}

// ---------------------------------------------------------------------------------------------
// tokio-inherit-task-local: task locals in one table per scope, cloned into spawned tasks.

tokio_inherit_task_local::inheritable_task_local! {
    /// The request id as an inheritable task local.
    pub(crate) static INHERIT_REQUEST_ID: u64;
}

/// Runs `f` inside `n` nested scopes of inheritable task locals, the request id (7) the
/// outermost: each value needs a scope of its own.
pub(crate) fn inherit_scope<R>(n: usize, f: impl FnOnce() -> R) -> R {
    fn nest(fillers: &[Filler], value: u64, f: &mut dyn FnMut()) {
        match fillers.split_first() {
            Some((filler, rest)) => filler
                .inherit
                .sync_scope(value, || nest(rest, value + 1, f)),
            None => f(),
        }
    }
    let mut f = Some(f);
    let mut result = None;
    INHERIT_REQUEST_ID.sync_scope(7, || {
        nest(fillers_for(n), 0, &mut || {
            result = Some(f.take().expect("called once")());
        });
    });
    result.expect("called")
}

/// A snapshot: the crate captures the current table for a closure (`inherit_task_local`), to
/// be run later in it, or for a future (`inherit_task_local()`, see [`inherit_future`]).
#[inline]
pub(crate) fn inherit_snapshot() -> impl FnOnce() + Send + 'static {
    tokio_inherit_task_local::inherit_task_local(|| {
        black_box(());
    })
}

/// `future` with the current table of inheritable task locals.
pub(crate) fn inherit_future<F: Future + 'static>(
    future: F,
) -> tokio::task::futures::TaskLocalFuture<tokio_inherit_task_local::TaskLocalInheritableTable, F> {
    future.inherit_task_local()
}

// ---------------------------------------------------------------------------------------------

/// Checks once, outside any timed loop, that each peer's operations do their work: `get`
/// reads the bound value, `set` + `reset` binds and restores, snapshots and runs carry the
/// values, wrapped futures and spawned tasks see them.
///
/// # Panics
/// On the first operation that does not.
pub(crate) fn verify() {
    verify_get();
    verify_set_reset();
    verify_snapshots();
    verify_futures();
}

fn verify_get() {
    for n in [8, 1_000].into_iter().filter(|&n| can_bind(n)) {
        let last = u64::try_from(n).expect("small") - 2;
        enter(Peer::Opentelemetry, n, || {
            assert_eq!(otel_get_current(), Some(7));
            assert_eq!(otel_get_map_current(), Some(7));
        });
        enter(Peer::Dcontext, n, || {
            assert_eq!(DC_REQUEST_ID.get(), Some(7));
            assert_eq!(
                dcontext::get_context_variable::<u64>(fillers_for(n)[n - 2].dcontext),
                Some(last)
            );
        });
        enter(Peer::ExecutionContext, n, || {
            assert_eq!(ec_get(), 7);
            assert_eq!(*fillers_for(n)[n - 2].flow.get(), last);
        });
        enter(Peer::InheritTaskLocal, n, || {
            assert_eq!(INHERIT_REQUEST_ID.get(), 7);
            assert_eq!(fillers_for(n)[n - 2].inherit.get(), last);
        });
    }
}

/// `set` + `reset`: the new value inside, the old one after.
fn verify_set_reset() {
    enter(Peer::Opentelemetry, 8, || {
        let guard = OtelContext::current_with_value(OtelRequestId(8)).attach();
        assert_eq!(otel_get_map_current(), Some(8));
        drop(guard);
        otel_set_reset(9);
        assert_eq!(otel_get_map_current(), Some(7));
    });
    enter(Peer::Dcontext, 8, || {
        let scope = dcontext::push_scope("request");
        DC_REQUEST_ID.set(8);
        assert_eq!(DC_REQUEST_ID.get(), Some(8));
        drop(scope);
        dcontext_set_reset(9);
        assert_eq!(DC_REQUEST_ID.get(), Some(7));
    });
    enter(Peer::ExecutionContext, 8, || {
        ec_set_reset(9);
        assert_eq!(ec_get(), 7);
    });
    enter(Peer::InheritTaskLocal, 8, || {
        INHERIT_REQUEST_ID.sync_scope(8, || assert_eq!(INHERIT_REQUEST_ID.get(), 8));
        assert_eq!(INHERIT_REQUEST_ID.get(), 7);
    });
}

/// Snapshots carry the values, and running in one (from outside any context of the peer)
/// sees them, then leaves.
fn verify_snapshots() {
    for n in [8, 1_000].into_iter().filter(|&n| can_bind(n)) {
        let otel = enter(Peer::Opentelemetry, n, OtelContext::current);
        assert_eq!(otel.get::<OtelRequestId>(), Some(&OtelRequestId(7)));
        let ec = enter(Peer::ExecutionContext, n, ExecutionContext::capture);
        assert_eq!(ec.run(ec_get), 7);
        let run_later = enter(Peer::InheritTaskLocal, n, || {
            tokio_inherit_task_local::inherit_task_local(|| INHERIT_REQUEST_ID.get())
        });
        assert_eq!(run_later(), 7);
        // A store made from a snapshot keeps the registered keys only (see `dcontext_init`).
        let snapshot = enter(Peer::Dcontext, n, dcontext::capture);
        let attached = dcontext::attach_snapshot(snapshot);
        assert_eq!(DC_REQUEST_ID.get(), Some(7));
        drop(attached);
        let fork = enter(Peer::Dcontext, n, dcontext::fork);
        let attached = dcontext::attach_store(fork);
        assert_eq!(DC_REQUEST_ID.get(), Some(7));
        drop(attached);
    }

    let otel = otel_context_with(8);
    assert_eq!(otel_get_map_current(), None);
    {
        let _guard = otel.clone().attach();
        assert_eq!(otel_get_map_current(), Some(7));
    }
    otel_run(&otel);
    assert_eq!(otel_get_map_current(), None);
    let snapshot = dcontext_with(8);
    {
        let _guard = dcontext::attach_snapshot(snapshot.clone());
        assert_eq!(DC_REQUEST_ID.get(), Some(7));
        assert_eq!(
            dcontext::get_context_variable::<u64>(fillers_for(8)[6].dcontext),
            Some(6)
        );
    }
    dcontext_run(&snapshot);
    assert_eq!(DC_REQUEST_ID.get(), None);
    let ec = ec_context_with(8);
    assert_eq!(ec.run(ec_get), 7);
}

/// Wrapped futures and spawned tasks see the values.
fn verify_futures() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let read = runtime.block_on(async {
        let otel = opentelemetry::context::FutureExt::with_context(
            async { otel_get_map_current() },
            otel_context_with(8),
        )
        .await;
        let dcontext =
            dcontext::ContextFutureExt::attach(async { DC_REQUEST_ID.get() }, dcontext_with(8))
                .await;
        let inherit = enter(Peer::InheritTaskLocal, 8, || {
            inherit_future(async { INHERIT_REQUEST_ID.get() })
        })
        .await;
        (otel, dcontext, inherit)
    });
    assert_eq!(read, (Some(7), Some(7), 7));
    let spawned = |peer| {
        enter(peer, 8, || {
            runtime.block_on(async {
                match peer {
                    Peer::Contextvars => contextvars::spawn(async { REQUEST_ID.get() })
                        .await
                        .expect("ran"),
                    Peer::Opentelemetry => {
                        tokio::spawn(opentelemetry::context::FutureExt::with_current_context(
                            async { otel_get_map_current() },
                        ))
                        .await
                        .expect("ran")
                    }
                    Peer::Dcontext => tokio::spawn(dcontext::ContextFutureExt::fork(async {
                        DC_REQUEST_ID.get()
                    }))
                    .await
                    .expect("ran"),
                    Peer::InheritTaskLocal => {
                        tokio::spawn(inherit_future(async { Some(INHERIT_REQUEST_ID.get()) }))
                            .await
                            .expect("ran")
                    }
                    Peer::ExecutionContext => unreachable!("no future support"),
                }
            })
        })
    };
    for peer in [
        Peer::Contextvars,
        Peer::Opentelemetry,
        Peer::Dcontext,
        Peer::InheritTaskLocal,
    ] {
        assert_eq!(
            spawned(peer),
            Some(7),
            "{peer:?}: a spawned task sees the value"
        );
    }
}

/// Spawns and awaits `iterations` trivial tasks one after the other on a current-thread
/// runtime, from inside `peer`'s context with 8 values bound; returns the time the loop took.
pub(crate) fn spawn_and_await<S, J>(peer: Peer, iterations: u64, spawn: S) -> Duration
where
    S: Fn() -> J,
    J: Future,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    enter(peer, 8, || {
        runtime.block_on(async {
            let start = Instant::now();
            for _ in 0..iterations {
                black_box(spawn().await);
            }
            start.elapsed()
        })
    })
}
