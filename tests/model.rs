//! Model-based test: random programs of context operations run against the library and
//! against a plain reference model of PEP 567 written here; every observation must agree.
//!
//! A program is a tree of [`Op`]s: `set`, `reset` (with a token of this context or of
//! another), `scoped` guards, `run` in a new, copied or stored context, futures wrapped with
//! a context, snapshots read later, tasks spawned with `contextvars::spawn` and with plain
//! `tokio::spawn`, yields, threads spawned both ways, and panics caught at a boundary. The
//! library runs it on a current-thread tokio runtime (so it is deterministic); the model
//! runs it with explicit context objects, a stack of entered contexts and plain `HashMap`s.
//! Spawned tasks and threads run in a context of their own, so the model may run them at
//! the spawn and report what they saw at the join: any value that crosses between them
//! shows up as a difference.
//!
//! `PROPTEST_CASES` sets the number of cases (10,000 by default).

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};

use contextvars::{Context, FutureExt, ResetError, ScopeGuard, SetError, Token, context_var};
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

#[context_var]
static A: u32;

#[context_var]
static B: u32 = 100;

#[context_var]
static C: u32 = c_default();

#[context_var(name = "d")]
static D: u32;

/// How often `C`'s default was computed: at most once per process (B3).
static C_INITS: AtomicUsize = AtomicUsize::new(0);

fn c_default() -> u32 {
    C_INITS.fetch_add(1, Ordering::SeqCst);
    200
}

/// What `get_or` falls back to.
const FALLBACK: u32 = 999;

// ---------------------------------------------------------------------------------------
// Programs
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Var {
    A,
    B,
    C,
    D,
}

const VARS: [Var; 4] = [Var::A, Var::B, Var::C, Var::D];

impl Var {
    fn name(self) -> &'static str {
        match self {
            Var::A => "A",
            Var::B => "B",
            Var::C => "C",
            Var::D => "d",
        }
    }

    fn default(self) -> Option<u32> {
        match self {
            Var::A | Var::D => None,
            Var::B => Some(100),
            Var::C => Some(200),
        }
    }
}

/// The context a block runs in.
#[derive(Clone, Debug)]
enum Target {
    /// `Context::new()`.
    New,
    /// `Context::current()`.
    Copy,
    /// `Context::current().with_value(var, value)`.
    CopyWith(Var, u32),
    /// `var.sync_scope(value, ..)` / `var.scope(value, ..)`.
    Scope(Var, u32),
    /// `Context::current().wrap(..)()` (synchronous blocks only).
    Wrap,
    /// A context stored by [`Op::Snapshot`], picked by index modulo their number, entered
    /// again with `run` (synchronous blocks only; a busy one is skipped).
    Snapshot(u8),
}

impl Target {
    /// Whether the block reports the context's bindings after it ends.
    fn reports_after(&self) -> bool {
        matches!(self, Target::New | Target::Copy | Target::CopyWith(..))
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// `var.set(value)`; the token is kept.
    Set(Var, u32),
    /// `var.reset(token)` with one of the kept tokens of `var` (by index modulo their
    /// number), which may come from another context.
    Reset(Var, u8),
    /// `get`, `get_or`, `try_get`, `is_set` and `with`.
    Read(Var),
    /// The mapping view of `Context::current()`.
    View,
    /// Stores `Context::current()` for later.
    Snapshot,
    /// The mapping view of a stored context.
    Inspect(u8),
    /// `tokio::task::yield_now().await` (asynchronous blocks only).
    Yield,
    /// Awaits one of the spawned tasks and reports what it saw (asynchronous blocks only).
    Join(u8),
    /// Panics (only inside a block that catches).
    Panic,
    /// `let _guard = var.scoped(value);` for the length of the body.
    Scoped(Var, u32, Vec<Op>),
    /// `var.scoped(value)`, the guard kept to be dropped later by [`Op::DropGuard`]: maybe
    /// out of order, or in another context (B16).
    Guard(Var, u32),
    /// Drops one of the kept guards (by index modulo their number).
    DropGuard(u8),
    /// A synchronous body run in a context (`Context::run`, `sync_scope`, `wrap`).
    Run(Target, Vec<Op>),
    /// An asynchronous body run in a context (`with_context`, `scope`).
    Within(Target, Vec<Op>),
    /// A task: `contextvars::spawn` if `inherit`, plain `tokio::spawn` otherwise.
    Spawn { inherit: bool, body: Vec<Op> },
    /// A thread: `contextvars::thread::spawn` if `inherit`, `std::thread::spawn` otherwise;
    /// joined at once.
    Thread { inherit: bool, body: Vec<Op> },
    /// The body, with its panic caught.
    Catch(Vec<Op>),
}

// ---------------------------------------------------------------------------------------
// Observations
// ---------------------------------------------------------------------------------------

/// Why a `set`, `scoped` or `reset` was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refused {
    NoContext,
    OtherContext,
    Other,
}

/// The mapping view of a context (B20).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mapping {
    len: usize,
    is_empty: bool,
    values: [Option<u32>; 4],
    contains: [bool; 4],
    names: Vec<&'static str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Obs {
    Read {
        var: Var,
        get: Option<u32>,
        get_or: u32,
        try_get: Result<u32, &'static str>,
        is_set: bool,
        with: Option<u32>,
    },
    Set(Var, Result<Option<u32>, Refused>),
    Reset(Var, Result<(), Refused>),
    NoToken(Var),
    Scoped(Var, Result<(), Refused>),
    /// A kept guard was dropped; `OtherContext` when its drop panicked because it was made
    /// in another context.
    GuardDropped(Result<(), Refused>),
    NoGuard,
    View(Mapping),
    Inspect(Mapping),
    /// The bindings of a block's context after the block.
    After(Mapping),
    /// The bindings of a task's or thread's context at its end.
    End(Mapping),
    NoSnapshot,
    Busy,
    NoTask,
    Caught(bool),
    Task {
        panicked: bool,
        seen: Vec<Obs>,
    },
    Thread {
        panicked: bool,
        seen: Vec<Obs>,
    },
    /// A panic that the program did not ask for: never expected.
    Unexpected(String),
}

// ---------------------------------------------------------------------------------------
// The library
// ---------------------------------------------------------------------------------------

/// The payload of [`Op::Panic`], raised with `resume_unwind` so that no hook prints it.
struct ModelPanic;

type Record = Arc<Mutex<Vec<Obs>>>;
type BoxFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

fn take(record: &Record) -> Vec<Obs> {
    std::mem::take(&mut *record.lock().unwrap_or_else(PoisonError::into_inner))
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

/// Polls a future that never waits (the body of a synchronous block) to completion.
fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut std::task::Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("a synchronous block awaited"),
    }
}

/// `catch_unwind` for a future: a panic in any poll ends it with `Err`.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

fn mapping(ctx: &Context) -> Mapping {
    let mut names: Vec<&'static str> = ctx.iter().map(|(name, _)| name).collect();
    names.sort_unstable();
    Mapping {
        len: ctx.len(),
        is_empty: ctx.is_empty(),
        values: [
            ctx.get(&A).copied(),
            ctx.get(&B).copied(),
            ctx.get(&C).copied(),
            ctx.get(&D).copied(),
        ],
        contains: [
            ctx.contains(&A),
            ctx.contains(&B),
            ctx.contains(&C),
            ctx.contains(&D),
        ],
        names,
    }
}

fn refused_set(err: &SetError) -> Refused {
    match err {
        SetError::NoContext { .. } => Refused::NoContext,
        _ => Refused::Other,
    }
}

fn refused_reset(err: &ResetError) -> Refused {
    match err {
        ResetError::OtherContext { .. } => Refused::OtherContext,
        ResetError::NoContext { .. } => Refused::NoContext,
        _ => Refused::Other,
    }
}

/// Binds `$x` to the static of `$var` and evaluates `$body` (the same expression, typed
/// once per variable).
macro_rules! on_var {
    ($var:expr, |$x:ident| $body:expr) => {
        match $var {
            Var::A => {
                let $x = &A;
                $body
            }
            Var::B => {
                let $x = &B;
                $body
            }
            Var::C => {
                let $x = &C;
                $body
            }
            Var::D => {
                let $x = &D;
                $body
            }
        }
    };
}

/// As [`on_var!`], also binding `$tokens` to the kept tokens of that variable.
macro_rules! on_var_tokens {
    ($self:ident, $var:expr, |$x:ident, $tokens:ident| $body:expr) => {
        match $var {
            Var::A => {
                let ($x, $tokens) = (&A, &mut $self.tokens.a);
                $body
            }
            Var::B => {
                let ($x, $tokens) = (&B, &mut $self.tokens.b);
                $body
            }
            Var::C => {
                let ($x, $tokens) = (&C, &mut $self.tokens.c);
                $body
            }
            Var::D => {
                let ($x, $tokens) = (&D, &mut $self.tokens.d);
                $body
            }
        }
    };
}

#[derive(Default)]
struct Tokens {
    a: Vec<Token<A>>,
    b: Vec<Token<B>>,
    c: Vec<Token<C>>,
    d: Vec<Token<D>>,
}

/// A spawned task's handle: `contextvars::spawn` gives its own, plain `tokio::spawn` tokio's.
enum Task {
    Inherit(contextvars::JoinHandle<()>),
    Plain(tokio::task::JoinHandle<()>),
}

impl Task {
    async fn join(self) -> Result<(), tokio::task::JoinError> {
        match self {
            Task::Inherit(handle) => handle.await,
            Task::Plain(handle) => handle.await,
        }
    }
}

/// Runs a program against the library. Each task and thread has its own.
struct Exec {
    record: Record,
    tokens: Tokens,
    snapshots: Vec<Option<Context>>,
    tasks: Vec<(Task, Record)>,
    guards: Vec<ScopeGuard>,
}

impl Exec {
    fn new(record: Record) -> Self {
        Exec {
            record,
            tokens: Tokens::default(),
            snapshots: Vec::new(),
            tasks: Vec::new(),
            guards: Vec::new(),
        }
    }

    fn push(&self, obs: Obs) {
        self.record
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(obs);
    }

    fn exec<'a>(&'a mut self, ops: &'a [Op]) -> BoxFuture<'a> {
        Box::pin(async move {
            for op in ops {
                self.step(op).await;
            }
        })
    }

    /// The whole body of a task or a thread: the program, the tasks it left, and the
    /// bindings at the end.
    async fn main(&mut self, ops: &[Op]) {
        self.exec(ops).await;
        while !self.tasks.is_empty() {
            self.join(0).await;
        }
        for guard in std::mem::take(&mut self.guards) {
            self.drop_guard(guard);
        }
        self.push(Obs::End(mapping(&Context::current())));
    }

    // `Option::copied` as a path is not general over the borrow's lifetime here.
    #[allow(clippy::redundant_closure_for_method_calls)]
    fn read(var: Var) -> Obs {
        match var {
            Var::A => Obs::Read {
                var,
                get: A.get(),
                get_or: A.get_or(FALLBACK),
                try_get: A.try_get().map_err(|e| e.var()),
                is_set: A.is_set(),
                with: A.with(|v| v.copied()),
            },
            Var::B => Obs::Read {
                var,
                get: Some(B.get()),
                get_or: B.get_or(FALLBACK),
                try_get: B.try_get().map_err(|e| e.var()),
                is_set: B.is_set(),
                with: Some(B.with(|v| *v)),
            },
            Var::C => Obs::Read {
                var,
                get: Some(C.get()),
                get_or: C.get_or(FALLBACK),
                try_get: C.try_get().map_err(|e| e.var()),
                is_set: C.is_set(),
                with: Some(C.with(|v| *v)),
            },
            Var::D => Obs::Read {
                var,
                get: D.get(),
                get_or: D.get_or(FALLBACK),
                try_get: D.try_get().map_err(|e| e.var()),
                is_set: D.is_set(),
                with: D.with(|v| v.copied()),
            },
        }
    }

    async fn join(&mut self, pick: u8) {
        if self.tasks.is_empty() {
            return self.push(Obs::NoTask);
        }
        let (handle, record) = self.tasks.remove(usize::from(pick) % self.tasks.len());
        let result = handle.join().await;
        let seen = take(&record);
        match result {
            Ok(()) => self.push(Obs::Task {
                panicked: false,
                seen,
            }),
            Err(err) if err.is_panic() => {
                let payload = err.into_panic();
                if payload.is::<ModelPanic>() {
                    self.push(Obs::Task {
                        panicked: true,
                        seen,
                    });
                } else {
                    self.push(Obs::Unexpected(panic_text(&*payload)));
                }
            }
            Err(err) => self.push(Obs::Unexpected(err.to_string())),
        }
    }

    #[allow(clippy::too_many_lines)] // one arm per operation reads best in one place
    async fn step(&mut self, op: &Op) {
        match op {
            Op::Set(var, value) => {
                let var = *var;
                let seen = on_var_tokens!(self, var, |x, tokens| match x.try_set(*value) {
                    Ok(token) => {
                        let old = token.old_value().copied();
                        tokens.push(token);
                        Ok(old)
                    }
                    Err(err) => Err(refused_set(&err)),
                });
                self.push(Obs::Set(var, seen));
            }
            Op::Reset(var, pick) => {
                let var = *var;
                let seen = on_var_tokens!(self, var, |x, tokens| if tokens.is_empty() {
                    None
                } else {
                    let token = tokens.remove(usize::from(*pick) % tokens.len());
                    Some(x.reset(token).map_err(|e| refused_reset(&e)))
                });
                self.push(seen.map_or(Obs::NoToken(var), |seen| Obs::Reset(var, seen)));
            }
            Op::Read(var) => self.push(Self::read(*var)),
            Op::View => self.push(Obs::View(mapping(&Context::current()))),
            Op::Snapshot => self.snapshots.push(Some(Context::current())),
            Op::Inspect(pick) => {
                let obs = if self.snapshots.is_empty() {
                    Obs::NoSnapshot
                } else {
                    match &self.snapshots[usize::from(*pick) % self.snapshots.len()] {
                        Some(ctx) => Obs::Inspect(mapping(ctx)),
                        None => Obs::Busy,
                    }
                };
                self.push(obs);
            }
            Op::Yield => tokio::task::yield_now().await,
            Op::Join(pick) => self.join(*pick).await,
            Op::Panic => resume_unwind(Box::new(ModelPanic)),
            Op::Scoped(var, value, body) => {
                let guard = self.guard(*var, *value);
                self.exec(body).await;
                drop(guard);
            }
            Op::Guard(var, value) => {
                if let Some(guard) = self.guard(*var, *value) {
                    self.guards.push(guard);
                }
            }
            Op::DropGuard(pick) => {
                if self.guards.is_empty() {
                    self.push(Obs::NoGuard);
                } else {
                    let guard = self.guards.remove(usize::from(*pick) % self.guards.len());
                    self.drop_guard(guard);
                }
            }
            Op::Run(target, body) => self.run(target, body),
            Op::Within(target, body) => self.within(target, body).await,
            Op::Spawn { inherit, body } => {
                let record = Record::default();
                let task_record = Arc::clone(&record);
                let body = body.clone();
                let task = async move { Exec::new(task_record).main(&body).await };
                let handle = if *inherit {
                    Task::Inherit(contextvars::spawn(task))
                } else {
                    Task::Plain(tokio::spawn(task))
                };
                self.tasks.push((handle, record));
            }
            Op::Thread { inherit, body } => {
                let record = Record::default();
                let thread_record = Arc::clone(&record);
                let body = body.clone();
                let thread = move || now(Exec::new(thread_record).main(&body));
                let result = if *inherit {
                    contextvars::thread::spawn(thread).join()
                } else {
                    std::thread::spawn(thread).join()
                };
                let seen = take(&record);
                match result {
                    Ok(()) => self.push(Obs::Thread {
                        panicked: false,
                        seen,
                    }),
                    Err(payload) if payload.is::<ModelPanic>() => {
                        self.push(Obs::Thread {
                            panicked: true,
                            seen,
                        });
                    }
                    Err(payload) => self.push(Obs::Unexpected(panic_text(&*payload))),
                }
            }
            Op::Catch(body) => {
                let result = CatchUnwind(self.exec(body)).await;
                match result {
                    Ok(()) => self.push(Obs::Caught(false)),
                    Err(payload) if payload.is::<ModelPanic>() => self.push(Obs::Caught(true)),
                    Err(payload) => resume_unwind(payload),
                }
            }
        }
    }

    /// `var.scoped(value)`, observed. In a task outside any context it panics (B26).
    fn guard(&self, var: Var, value: u32) -> Option<ScopeGuard> {
        match on_var!(var, |x| catch_unwind(|| x.scoped(value))) {
            Ok(guard) => {
                self.push(Obs::Scoped(var, Ok(())));
                Some(guard)
            }
            Err(payload) => {
                let text = panic_text(&*payload);
                if text.contains("this tokio task has no context") {
                    self.push(Obs::Scoped(var, Err(Refused::NoContext)));
                } else {
                    self.push(Obs::Unexpected(text));
                }
                None
            }
        }
    }

    /// Drops a kept guard, observed. In another context it panics (B16).
    fn drop_guard(&self, guard: ScopeGuard) {
        match catch_unwind(AssertUnwindSafe(|| drop(guard))) {
            Ok(()) => self.push(Obs::GuardDropped(Ok(()))),
            Err(payload) => {
                let text = panic_text(&*payload);
                if text.contains("different context") {
                    self.push(Obs::GuardDropped(Err(Refused::OtherContext)));
                } else {
                    self.push(Obs::Unexpected(text));
                }
            }
        }
    }

    /// A synchronous block. A panic in it goes on after the block's context is reported or
    /// put back.
    fn run(&mut self, target: &Target, body: &[Op]) {
        let (ctx, slot) = match target {
            Target::New => (Context::new(), None),
            Target::Copy => (Context::current(), None),
            Target::CopyWith(var, value) => (
                on_var!(*var, |x| Context::current().with_value(x, *value)),
                None,
            ),
            Target::Scope(var, value) => {
                return on_var!(*var, |x| x.sync_scope(*value, || now(self.exec(body))));
            }
            Target::Wrap => return Context::current().wrap(|| now(self.exec(body)))(),
            Target::Snapshot(pick) => {
                if self.snapshots.is_empty() {
                    return self.push(Obs::NoSnapshot);
                }
                let slot = usize::from(*pick) % self.snapshots.len();
                match self.snapshots[slot].take() {
                    Some(ctx) => (ctx, Some(slot)),
                    None => return self.push(Obs::Busy),
                }
            }
        };
        let mut ctx = ctx;
        let result = catch_unwind(AssertUnwindSafe(|| ctx.run(|| now(self.exec(body)))));
        if target.reports_after() {
            self.push(Obs::After(mapping(&ctx)));
        }
        if let Some(slot) = slot {
            self.snapshots[slot] = Some(ctx);
        }
        if let Err(payload) = result {
            resume_unwind(payload);
        }
    }

    /// An asynchronous block. Its context is reported only when it ends normally: after a
    /// panic, the body's guards are dropped with the wrapper, not during the unwinding.
    async fn within(&mut self, target: &Target, body: &[Op]) {
        let ctx = match target {
            Target::New => Context::new(),
            Target::Copy => Context::current(),
            Target::CopyWith(var, value) => {
                on_var!(*var, |x| Context::current().with_value(x, *value))
            }
            Target::Scope(var, value) => {
                let scoped = on_var!(*var, |x| x.scope(*value, self.exec(body)));
                return scoped.await;
            }
            Target::Wrap | Target::Snapshot(_) => unreachable!("not generated for async blocks"),
        };
        let after = {
            let mut wrapped = pin!(self.exec(body).with_context(ctx));
            wrapped.as_mut().await;
            mapping(wrapped.context())
        };
        if target.reports_after() {
            self.push(Obs::After(after));
        }
    }
}

/// Runs `program` on a fresh thread, as the root future of a current-thread runtime (so the
/// thread's own context, as in `#[tokio::main]`), and returns what it saw.
fn run_library(program: &[Op]) -> Result<Vec<Obs>, String> {
    let program = program.to_vec();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
        let record = Record::default();
        runtime.block_on(Exec::new(Arc::clone(&record)).main(&program));
        take(&record)
    })
    .join()
    .map_err(|payload| panic_text(&*payload))
}

// ---------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------

/// A panic unwinding through the model.
struct Unwind;

type Flow = Result<(), Unwind>;

/// A token: the context it was made in and the value before the `set`.
struct ModelToken {
    context: usize,
    old: Option<u32>,
}

/// A scope guard: its context, its variable, and the value it restores (like a token).
#[derive(Clone, Copy)]
struct ModelGuard {
    context: usize,
    var: Var,
    old: Option<u32>,
}

/// PEP 567 with explicit contexts. Each task and thread has its own.
///
/// Scope guards, which PEP 567 does not have, follow SPEC B15-B16 (Python 3.14's
/// `with var.set(value):`): a guard restores its own variable, and only it, to the value it
/// had before, exactly as resetting a token does, in whatever order guards are dropped; a
/// guard dropped in another context changes nothing and panics.
struct Model {
    /// Every context made so far, by identity.
    contexts: Vec<HashMap<Var, u32>>,
    guards: Vec<ModelGuard>,
    /// The entered contexts; `None` is a tokio task spawned without a context (B26): it
    /// reads an empty context and cannot write.
    stack: Vec<Option<usize>>,
    tokens: HashMap<Var, Vec<ModelToken>>,
    snapshots: Vec<Option<usize>>,
    /// Tasks not joined yet: whether each panicked and what it saw.
    tasks: Vec<(bool, Vec<Obs>)>,
    seen: Vec<Obs>,
}

impl Model {
    /// A task or thread whose first context holds `bindings`, or none.
    fn new(bindings: Option<HashMap<Var, u32>>) -> Self {
        let mut model = Model {
            contexts: Vec::new(),
            guards: Vec::new(),
            stack: Vec::new(),
            tokens: HashMap::new(),
            snapshots: Vec::new(),
            tasks: Vec::new(),
            seen: Vec::new(),
        };
        let first = bindings.map(|bindings| model.context(bindings));
        model.stack.push(first);
        model
    }

    fn context(&mut self, bindings: HashMap<Var, u32>) -> usize {
        self.contexts.push(bindings);
        self.contexts.len() - 1
    }

    fn current(&self) -> Option<usize> {
        *self.stack.last().expect("the first context is never left")
    }

    /// The current bindings (none in a task outside any context).
    fn bindings(&self) -> HashMap<Var, u32> {
        self.current()
            .map(|id| self.contexts[id].clone())
            .unwrap_or_default()
    }

    fn mapping(bindings: &HashMap<Var, u32>) -> Mapping {
        let mut names: Vec<&'static str> = bindings.keys().map(|var| var.name()).collect();
        names.sort_unstable();
        Mapping {
            len: bindings.len(),
            is_empty: bindings.is_empty(),
            values: VARS.map(|var| bindings.get(&var).copied()),
            contains: VARS.map(|var| bindings.contains_key(&var)),
            names,
        }
    }

    /// The body of a task or thread, as [`Exec::main`].
    fn main(mut self, ops: &[Op]) -> (bool, Vec<Obs>) {
        let flow = self.exec(ops);
        if flow.is_ok() {
            for (panicked, seen) in std::mem::take(&mut self.tasks) {
                self.seen.push(Obs::Task { panicked, seen });
            }
            for guard in std::mem::take(&mut self.guards) {
                let dropped = self.drop_guard(guard);
                self.seen.push(Obs::GuardDropped(dropped));
            }
            let end = Self::mapping(&self.bindings());
            self.seen.push(Obs::End(end));
        }
        (flow.is_err(), self.seen)
    }

    fn exec(&mut self, ops: &[Op]) -> Flow {
        for op in ops {
            self.step(op)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_lines)] // one arm per operation reads best in one place
    fn step(&mut self, op: &Op) -> Flow {
        match op {
            Op::Set(var, value) => {
                let seen = match self.current() {
                    None => Err(Refused::NoContext),
                    Some(id) => {
                        let old = self.contexts[id].insert(*var, *value);
                        let token = ModelToken { context: id, old };
                        self.tokens.entry(*var).or_default().push(token);
                        Ok(old)
                    }
                };
                self.seen.push(Obs::Set(*var, seen));
            }
            Op::Reset(var, pick) => {
                let tokens = self.tokens.entry(*var).or_default();
                if tokens.is_empty() {
                    self.seen.push(Obs::NoToken(*var));
                    return Ok(());
                }
                let token = tokens.remove(usize::from(*pick) % tokens.len());
                let seen = match self.current() {
                    None => Err(Refused::NoContext),
                    Some(id) if id != token.context => Err(Refused::OtherContext),
                    Some(id) => {
                        match token.old {
                            Some(old) => self.contexts[id].insert(*var, old),
                            None => self.contexts[id].remove(var),
                        };
                        Ok(())
                    }
                };
                self.seen.push(Obs::Reset(*var, seen));
            }
            Op::Read(var) => {
                let bound = self.bindings().get(var).copied();
                let get = bound.or(var.default());
                self.seen.push(Obs::Read {
                    var: *var,
                    get,
                    get_or: bound.unwrap_or(FALLBACK),
                    try_get: get.ok_or(var.name()),
                    is_set: bound.is_some(),
                    with: get,
                });
            }
            Op::View => {
                let view = Self::mapping(&self.bindings());
                self.seen.push(Obs::View(view));
            }
            Op::Snapshot => {
                let id = self.context(self.bindings());
                self.snapshots.push(Some(id));
            }
            Op::Inspect(pick) => {
                let obs = if self.snapshots.is_empty() {
                    Obs::NoSnapshot
                } else {
                    match self.snapshots[usize::from(*pick) % self.snapshots.len()] {
                        Some(id) => Obs::Inspect(Self::mapping(&self.contexts[id])),
                        None => Obs::Busy,
                    }
                };
                self.seen.push(obs);
            }
            Op::Yield => {}
            Op::Join(pick) => {
                if self.tasks.is_empty() {
                    self.seen.push(Obs::NoTask);
                } else {
                    let (panicked, seen) = self.tasks.remove(usize::from(*pick) % self.tasks.len());
                    self.seen.push(Obs::Task { panicked, seen });
                }
            }
            Op::Panic => return Err(Unwind),
            Op::Scoped(var, value, body) => {
                let guard = self.guard(*var, *value);
                let flow = self.exec(body);
                if let Some(guard) = guard {
                    let _ = self.drop_guard(guard);
                }
                return flow;
            }
            Op::Guard(var, value) => {
                if let Some(guard) = self.guard(*var, *value) {
                    self.guards.push(guard);
                }
            }
            Op::DropGuard(pick) => {
                if self.guards.is_empty() {
                    self.seen.push(Obs::NoGuard);
                } else {
                    let guard = self.guards.remove(usize::from(*pick) % self.guards.len());
                    let dropped = self.drop_guard(guard);
                    self.seen.push(Obs::GuardDropped(dropped));
                }
            }
            Op::Run(target, body) | Op::Within(target, body) => {
                let is_async = matches!(op, Op::Within(..));
                return self.block(target, body, is_async);
            }
            Op::Spawn { inherit, body } => {
                let bindings = inherit.then(|| self.bindings());
                let result = Model::new(bindings).main(body);
                self.tasks.push(result);
            }
            Op::Thread { inherit, body } => {
                let bindings = if *inherit {
                    self.bindings()
                } else {
                    HashMap::new()
                };
                let (panicked, seen) = Model::new(Some(bindings)).main(body);
                self.seen.push(Obs::Thread { panicked, seen });
            }
            Op::Catch(body) => {
                let flow = self.exec(body);
                self.seen.push(Obs::Caught(flow.is_err()));
            }
        }
        Ok(())
    }

    fn guard(&mut self, var: Var, value: u32) -> Option<ModelGuard> {
        let Some(id) = self.current() else {
            self.seen.push(Obs::Scoped(var, Err(Refused::NoContext)));
            return None;
        };
        let old = self.contexts[id].insert(var, value);
        self.seen.push(Obs::Scoped(var, Ok(())));
        Some(ModelGuard {
            context: id,
            var,
            old,
        })
    }

    fn drop_guard(&mut self, guard: ModelGuard) -> Result<(), Refused> {
        let Some(id) = self.current().filter(|&id| id == guard.context) else {
            return Err(Refused::OtherContext);
        };
        match guard.old {
            Some(old) => self.contexts[id].insert(guard.var, old),
            None => self.contexts[id].remove(&guard.var),
        };
        Ok(())
    }

    fn block(&mut self, target: &Target, body: &[Op], is_async: bool) -> Flow {
        let mut slot = None;
        let id = match target {
            Target::New => self.context(HashMap::new()),
            Target::Copy | Target::Wrap => self.context(self.bindings()),
            Target::CopyWith(var, value) | Target::Scope(var, value) => {
                let mut bindings = self.bindings();
                bindings.insert(*var, *value);
                self.context(bindings)
            }
            Target::Snapshot(pick) => {
                if self.snapshots.is_empty() {
                    self.seen.push(Obs::NoSnapshot);
                    return Ok(());
                }
                let index = usize::from(*pick) % self.snapshots.len();
                let Some(id) = self.snapshots[index].take() else {
                    self.seen.push(Obs::Busy);
                    return Ok(());
                };
                slot = Some(index);
                id
            }
        };
        self.stack.push(Some(id));
        let flow = self.exec(body);
        self.stack.pop();
        if target.reports_after() && !(is_async && flow.is_err()) {
            let after = Self::mapping(&self.contexts[id]);
            self.seen.push(Obs::After(after));
        }
        if let Some(index) = slot {
            self.snapshots[index] = Some(id);
        }
        flow
    }
}

// ---------------------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------------------

/// What a block may contain.
#[derive(Clone, Copy)]
struct Mode {
    /// The block can `.await` (not inside `Context::run` or a thread).
    is_async: bool,
    /// A tokio runtime is there to spawn on.
    runtime: bool,
    /// A boundary around the block catches panics.
    can_panic: bool,
}

fn var() -> impl Strategy<Value = Var> {
    prop_oneof![Just(Var::A), Just(Var::B), Just(Var::C), Just(Var::D)]
}

fn value() -> impl Strategy<Value = u32> {
    0..4_u32
}

fn target(is_async: bool) -> BoxedStrategy<Target> {
    let common = prop_oneof![
        Just(Target::New),
        Just(Target::Copy),
        (var(), value()).prop_map(|(var, value)| Target::CopyWith(var, value)),
        (var(), value()).prop_map(|(var, value)| Target::Scope(var, value)),
    ];
    if is_async {
        common.boxed()
    } else {
        prop_oneof![
            3 => common,
            1 => Just(Target::Wrap),
            2 => any::<u8>().prop_map(Target::Snapshot),
        ]
        .boxed()
    }
}

fn ops(depth: u32, mode: Mode, max: usize) -> BoxedStrategy<Vec<Op>> {
    prop::collection::vec(op(depth, mode), 0..=max).boxed()
}

fn op(depth: u32, mode: Mode) -> BoxedStrategy<Op> {
    let mut arms: Vec<(u32, BoxedStrategy<Op>)> = vec![
        (
            5,
            (var(), value())
                .prop_map(|(var, value)| Op::Set(var, value))
                .boxed(),
        ),
        (
            3,
            (var(), any::<u8>())
                .prop_map(|(var, pick)| Op::Reset(var, pick))
                .boxed(),
        ),
        (5, var().prop_map(Op::Read).boxed()),
        (1, Just(Op::View).boxed()),
        (1, Just(Op::Snapshot).boxed()),
        (1, any::<u8>().prop_map(Op::Inspect).boxed()),
    ];
    if mode.is_async {
        arms.push((2, Just(Op::Yield).boxed()));
        arms.push((1, any::<u8>().prop_map(Op::Join).boxed()));
    }
    if mode.can_panic {
        arms.push((1, Just(Op::Panic).boxed()));
    }
    // Guards kept and dropped later: out of order, or in another context (B16).
    arms.push((
        2,
        (var(), value())
            .prop_map(|(var, value)| Op::Guard(var, value))
            .boxed(),
    ));
    arms.push((2, any::<u8>().prop_map(Op::DropGuard).boxed()));
    if depth > 0 {
        let depth = depth - 1;
        let sync = Mode {
            is_async: false,
            ..mode
        };
        let task = Mode {
            is_async: true,
            runtime: true,
            can_panic: true,
        };
        let thread = Mode {
            is_async: false,
            runtime: false,
            can_panic: true,
        };
        let catch = Mode {
            can_panic: true,
            ..mode
        };
        arms.push((
            2,
            (var(), value(), ops(depth, mode, 4))
                .prop_map(|(var, value, body)| Op::Scoped(var, value, body))
                .boxed(),
        ));
        arms.push((
            2,
            (target(false), ops(depth, sync, 4))
                .prop_map(|(target, body)| Op::Run(target, body))
                .boxed(),
        ));
        if mode.is_async {
            arms.push((
                2,
                (target(true), ops(depth, mode, 4))
                    .prop_map(|(target, body)| Op::Within(target, body))
                    .boxed(),
            ));
        }
        if mode.runtime {
            arms.push((
                2,
                (any::<bool>(), ops(depth, task, 4))
                    .prop_map(|(inherit, body)| Op::Spawn { inherit, body })
                    .boxed(),
            ));
        }
        arms.push((
            1,
            (any::<bool>(), ops(depth, thread, 4))
                .prop_map(|(inherit, body)| Op::Thread { inherit, body })
                .boxed(),
        ));
        arms.push((1, ops(depth, catch, 4).prop_map(Op::Catch).boxed()));
    }
    Union::new_weighted(arms).boxed()
}

fn program() -> BoxedStrategy<Vec<Op>> {
    ops(
        3,
        Mode {
            is_async: true,
            runtime: true,
            can_panic: false,
        },
        12,
    )
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

fn check(program: &[Op]) -> Result<(), TestCaseError> {
    let (_, expected) = Model::new(Some(HashMap::new())).main(program);
    let actual = run_library(program).map_err(|panic| {
        TestCaseError::fail(format!(
            "the program panicked outside any boundary: {panic}"
        ))
    })?;
    if actual != expected {
        let at = actual
            .iter()
            .zip(&expected)
            .take_while(|(a, e)| a == e)
            .count();
        return Err(TestCaseError::fail(format!(
            "observation #{at} differs\n  library: {:?}\n  model:   {:?}\nlibrary saw: {actual:?}",
            actual.get(at),
            expected.get(at),
        )));
    }
    Ok(())
}

#[test]
fn library_agrees_with_the_pep_567_model() {
    // `scoped` in a task spawned without a context panics by design (B26); those panics
    // are expected and caught, so keep them off the test output.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = panic_text(info.payload());
        if !text.contains("this tokio task has no context") && !text.contains("different context") {
            default_hook(info);
        }
    }));

    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(10_000);
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let started = std::time::Instant::now();
    let result = runner.run(&program(), |program| check(&program));
    let _ = std::panic::take_hook();
    if let Err(failure) = result {
        panic!("{failure}");
    }
    eprintln!(
        "model: {cases} programs agreed in {:.1?}",
        started.elapsed()
    );
    assert!(
        C_INITS.load(Ordering::SeqCst) <= 1,
        "C's default was computed more than once"
    );
}
