//! Context variables: a typed key into the current context, with an optional default.

use std::any::{Any, type_name};
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::context::Context;
use crate::current::{self, Lend, Lent, NO_CONTEXT, Unwritable};
use crate::error::{LookupError, ResetError, SetError};
use crate::guard::ScopeGuard;
use crate::map::{CopyProof, Leaf, Value, VarMeta};
use crate::quiet::QuietDropProof;
use crate::token::Token;

/// The identity and value type of one context variable.
///
/// `#[context_var]` implements it on a type it generates for each variable, named like the
/// static, so that every variable has a type of its own: a [`Token`] of one variable cannot
/// reset another, which the compiler checks. Write it by hand only to declare a variable
/// without the macro:
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::{ContextVar, Key, NoDefault};
///
/// #[allow(non_camel_case_types)]
/// pub struct REQUEST_ID {}
///
/// impl Key for REQUEST_ID {
///     type Value = String;
///     type Default = NoDefault;
/// }
///
/// pub static REQUEST_ID: ContextVar<REQUEST_ID> = ContextVar::new("request_id");
///
/// assert_eq!(REQUEST_ID.get(), None);
/// ```
pub trait Key: 'static {
    /// The variable's value type. It crosses tasks and threads, so it is `Send + Sync`.
    type Value: Send + Sync + 'static;
    /// [`NoDefault`] or [`WithDefault`]: whether `get` returns `Option<Value>` or `Value`.
    type Default: DefaultKind;

    /// Whether the variable's values may be written to logs (`#[context_var(log)]`). Context
    /// often holds secrets, so the default is no.
    const LOG: bool = false;

    /// Where the variable is declared, as `crate::module::STATIC`: what tells apart, on a log
    /// line, variables that share a name (see the `tracing` module). `#[context_var]` writes
    /// the static's `module_path!()` and identifier; the default is the name of this type,
    /// which `#[context_var]` declares next to the static with the static's own name.
    #[must_use]
    fn path() -> &'static str {
        type_name::<Self>()
    }

    /// This crate's own bookkeeping (which request a context serves, how baggage arrived):
    /// such bindings flow like any other but are not part of the mapping view
    /// ([`Context::iter`], [`Context::len`], `Debug`).
    #[doc(hidden)]
    const HIDDEN: bool = false;

    /// Proof that [`Value`](Self::Value) is `Copy`, where it is: a small `Copy` value is then
    /// stored in the context itself, without an allocation. `#[context_var]` writes it for
    /// every `Copy` type; the default, `None`, stores every value behind an `Arc`.
    #[doc(hidden)]
    #[inline]
    #[must_use]
    fn copy_proof() -> Option<CopyProof<Self::Value>> {
        None
    }

    /// Proof that dropping a [`Value`](Self::Value) runs no code that could see a context,
    /// where it does not (a `String`, a `Vec<u8>`): a context whose values all drop quietly
    /// is then let go of without being entered. `#[context_var]` writes it for every type
    /// that qualifies; the default, `None`, drops each value inside its context.
    #[doc(hidden)]
    #[inline]
    #[must_use]
    fn quiet_drop_proof() -> Option<QuietDropProof<Self::Value>> {
        None
    }

    /// Formats a value in [`Context`]'s `Debug` output and [`Context::iter`]. The default
    /// writes the type's name; `#[context_var]` uses the value's `Debug` where it has one.
    ///
    /// # Errors
    /// Those of the formatter.
    fn fmt_value(value: &Self::Value, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let _ = value;
        f.write_str(type_name::<Self::Value>())
    }
}

mod sealed {
    pub trait Sealed {}
}

/// Whether a variable has a default: [`NoDefault`] or [`WithDefault`]. Sealed.
pub trait DefaultKind: sealed::Sealed + 'static {
    /// Where the variable keeps its default.
    #[doc(hidden)]
    type Slot<T: Send + Sync + 'static>: Send + Sync;
    #[doc(hidden)]
    #[track_caller]
    fn default_ref<'a, T: Send + Sync + 'static>(
        slot: &'a Self::Slot<T>,
        var: &'static str,
    ) -> Option<&'a T>;
}

/// A variable without a default: `get` returns `Option<T>`.
#[derive(Debug)]
pub enum NoDefault {}

/// A variable with a default: `get` returns `T`.
#[derive(Debug)]
pub enum WithDefault {}

impl sealed::Sealed for NoDefault {}
impl sealed::Sealed for WithDefault {}

impl DefaultKind for NoDefault {
    type Slot<T: Send + Sync + 'static> = ();
    fn default_ref<'a, T: Send + Sync + 'static>((): &'a (), _: &'static str) -> Option<&'a T> {
        None
    }
}

/// A default evaluated on first need, once per process.
#[doc(hidden)]
pub struct Lazy<T> {
    cell: OnceLock<T>,
    init: fn() -> T,
}

thread_local! {
    /// Defaults being evaluated on this thread, to catch an initializer that reads itself.
    static INITIALIZING: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Pops a default's marker off `INITIALIZING` however its initializer ends.
struct Pop(usize);

impl Drop for Pop {
    fn drop(&mut self) {
        let _ = INITIALIZING.try_with(|s| s.borrow_mut().retain(|&p| p != self.0));
    }
}

impl<T> Lazy<T> {
    #[inline]
    #[track_caller]
    fn force(&self, var: &'static str) -> &T {
        match self.cell.get() {
            Some(value) => value,
            None => self.init_once(var),
        }
    }

    /// The first need of the default: out of line, so that a read of a default already made
    /// moves nothing it only needs here.
    #[cold]
    #[inline(never)]
    #[track_caller]
    fn init_once(&self, var: &'static str) -> &T {
        let me = std::ptr::from_ref(self).addr();
        // At thread exit the stack may be gone already: skip the check rather than panic
        // inside a thread-local's destructor, which would abort.
        let reentered = INITIALIZING
            .try_with(|stack| {
                let mut stack = stack.borrow_mut();
                let reentered = stack.contains(&me);
                if !reentered {
                    stack.push(me);
                }
                reentered
            })
            .unwrap_or(false);
        assert!(
            !reentered,
            "contextvars: the default of `{var}` reads `{var}` while it is being computed; \
             a default must not depend on itself"
        );
        // If the initializer panics, the panic reaches this caller, nothing is stored, and the
        // next read runs the initializer again.
        let _pop = Pop(me);
        self.cell.get_or_init(self.init)
    }
}

impl DefaultKind for WithDefault {
    type Slot<T: Send + Sync + 'static> = Lazy<T>;
    #[track_caller]
    fn default_ref<'a, T: Send + Sync + 'static>(
        slot: &'a Lazy<T>,
        var: &'static str,
    ) -> Option<&'a T> {
        Some(slot.force(var))
    }
}

/// A context variable: a typed key whose value depends on the current context.
///
/// Declare one with `#[context_var]` on a `static` (the macro crate); this is the type it
/// expands to. `K` is the variable's own [`Key`] type, `D` says whether it has a default and
/// follows from `K`.
///
/// The methods split by default: for a variable with a default, `get` returns `T` and `with`
/// lends `&T`; for one without, `Option<T>` and `Option<&T>`.
///
/// Values are never cloned by the library: `set` moves the value in, `get` clones it out
/// (use [`with`](Self::with) to borrow instead). Contexts that share a value share one
/// allocation of it (behind an `Arc`); a small `Copy` value (two words at most, such as a
/// `u64` or a `&'static str`) is stored in place instead, without an allocation.
pub struct ContextVar<K: Key, D: DefaultKind = <K as Key>::Default> {
    name: &'static str,
    /// Dense id used as the map key; `0` until first use.
    key: AtomicU32,
    default: D::Slot<K::Value>,
    _key: PhantomData<fn() -> K>,
}

impl<K: Key<Default = NoDefault>> ContextVar<K, NoDefault> {
    /// A variable without a default, named `name` in errors, `Debug` output and logs.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{ContextVar, Key, NoDefault};
    /// # #[allow(non_camel_case_types)] struct TENANT {}
    /// # impl Key for TENANT { type Value = u64; type Default = NoDefault; }
    /// static TENANT: ContextVar<TENANT> = ContextVar::new("tenant");
    /// assert_eq!(TENANT.name(), "tenant");
    /// ```
    #[must_use]
    pub const fn new(name: &'static str) -> Self {
        ContextVar {
            name,
            key: AtomicU32::new(0),
            default: (),
            _key: PhantomData,
        }
    }

    /// The value in the current context, or `None` where it is not set. A value of a `Copy`
    /// type declared with `#[context_var]` is copied, without calling its `Clone`.
    ///
    /// The value's `Clone` runs inside the context: it may read variables, and set them in a
    /// context it enters that does not hold that very value (`Context::new().run(…)`); a `set`
    /// or `reset` in a context that holds it (the one it is being read from, or a snapshot or
    /// scope of that one) panics, since it could free the value (`try_set` there returns the
    /// error it would return anyway, such as [`SetError::Inherited`], where there is one).
    /// Read such a value with [`with`](Self::with), whose closure may read and set variables.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{Context, ContextVar, Key, NoDefault};
    /// # #[allow(non_camel_case_types)] struct USER {}
    /// # impl Key for USER { type Value = String; type Default = NoDefault; }
    /// # static USER: ContextVar<USER> = ContextVar::new("user");
    /// assert_eq!(USER.get(), None);
    /// let _token = USER.set("ann".to_string());
    /// assert_eq!(USER.get().as_deref(), Some("ann"));
    /// ```
    #[must_use]
    pub fn get(&self) -> Option<K::Value>
    where
        K::Value: Clone,
    {
        self.lookup()
    }

    /// Lends the value to `f` without cloning it: `Some(&value)` where it is set, else `None`.
    /// `f` may read and set context variables.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{ContextVar, Key, NoDefault};
    /// # #[allow(non_camel_case_types)] struct BODY {}
    /// # impl Key for BODY { type Value = Vec<u8>; type Default = NoDefault; }
    /// # static BODY: ContextVar<BODY> = ContextVar::new("body");
    /// let _token = BODY.set(vec![0; 1 << 20]);
    /// let len = BODY.with(|body| body.map_or(0, Vec::len));
    /// assert_eq!(len, 1 << 20);
    /// ```
    pub fn with<R>(&self, f: impl FnOnce(Option<&K::Value>) -> R) -> R {
        self.lend(LendSome(f)).unwrap_or_else(|LendSome(f)| f(None))
    }
}

impl<K: Key<Default = WithDefault>> ContextVar<K, WithDefault> {
    /// A variable whose default is `init()`, evaluated on first need, at most once per
    /// process. The default is not a binding: no context lists it.
    ///
    /// As with `std::sync::LazyLock`, other threads that need the default while `init`
    /// runs wait for it. So `init` must not read this variable (that panics, naming it) and
    /// must not wait for another thread that reads it, such as a thread it spawns and joins:
    /// the two would wait for each other forever.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{ContextVar, Key, WithDefault};
    /// # #[allow(non_camel_case_types)] struct USER {}
    /// # impl Key for USER { type Value = String; type Default = WithDefault; }
    /// static USER: ContextVar<USER> = ContextVar::with_default("user", || "guest".to_string());
    /// assert_eq!(USER.get(), "guest");
    /// ```
    #[must_use]
    pub const fn with_default(name: &'static str, init: fn() -> K::Value) -> Self {
        ContextVar {
            name,
            key: AtomicU32::new(0),
            default: Lazy {
                cell: OnceLock::new(),
                init,
            },
            _key: PhantomData,
        }
    }

    /// The value in the current context, else the default.
    ///
    /// # Panics
    /// If the default's initializer panics (the panic is passed on; the next read runs the
    /// initializer again), or if the initializer reads this variable itself.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{ContextVar, Key, WithDefault};
    /// # #[allow(non_camel_case_types)] struct RETRIES {}
    /// # impl Key for RETRIES { type Value = u32; type Default = WithDefault; }
    /// # static RETRIES: ContextVar<RETRIES> = ContextVar::with_default("retries", || 3);
    /// assert_eq!(RETRIES.get(), 3);
    /// let _token = RETRIES.set(5);
    /// assert_eq!(RETRIES.get(), 5);
    /// ```
    #[must_use]
    #[track_caller]
    pub fn get(&self) -> K::Value
    where
        K::Value: Clone,
    {
        // Not in a closure, so that a panic of the default's initializer names the caller.
        match self.lookup() {
            Some(value) => value,
            None => self.default_value().clone(),
        }
    }

    /// Lends the value (or the default) to `f` without cloning it. `f` may read and set
    /// context variables.
    ///
    /// # Panics
    /// As [`get`](Self::get), if the default's initializer panics.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{ContextVar, Key, WithDefault};
    /// # #[allow(non_camel_case_types)] struct GREETING {}
    /// # impl Key for GREETING { type Value = String; type Default = WithDefault; }
    /// # static GREETING: ContextVar<GREETING> = ContextVar::with_default("greeting", || "hello".into());
    /// assert_eq!(GREETING.with(|g| g.len()), 5);
    /// ```
    #[track_caller]
    pub fn with<R>(&self, f: impl FnOnce(&K::Value) -> R) -> R {
        // The default is read here, not in a closure, so that a panic of its initializer
        // names the caller.
        match self.lend(LendValue(f)) {
            Ok(result) => result,
            Err(LendValue(f)) => f(self.default_value()),
        }
    }

    /// The default, evaluating it if this is the first need.
    ///
    /// # Panics
    /// As [`get`](Self::get), if the default's initializer panics.
    #[must_use]
    #[track_caller]
    pub fn default_value(&self) -> &K::Value {
        self.default.force(self.name)
    }
}

impl<K: Key> ContextVar<K> {
    /// The variable's name: the static's identifier, or the `name = "…"` it was declared with.
    /// Two variables may share a name; they are still different variables.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Lends the value bound here to `lender` (see `current::lend`); `lender` back where none
    /// is bound.
    fn lend<L: Lend<K::Value>>(&self, lender: L) -> Result<L::Output, L> {
        let key = self.key.load(Ordering::Relaxed);
        match current::lend(key, || self.key(), K::copy_proof(), lender) {
            Lent::Done(output) => Ok(output),
            Lent::Unbound(lender) => Err(lender),
            // Stored in place, and the key gave no proof to copy it out with this time: lent
            // from a clone of the binding's `Value`, which holds it whatever its storage.
            Lent::InPlace(lender) => match current::find(self.key(), |leaf| leaf.value.clone()) {
                Some(value) => Ok(lender.lend(downcast::<K::Value>(&value))),
                None => Err(lender),
            },
        }
    }

    fn lookup(&self) -> Option<K::Value>
    where
        K::Value: Clone,
    {
        current::get_cloned::<K::Value>(
            self.key.load(Ordering::Relaxed),
            || self.key(),
            K::copy_proof(),
        )
    }

    #[track_caller]
    fn default_ref(&self) -> Option<&K::Value> {
        K::Default::default_ref(&self.default, self.name)
    }

    /// The value in the current context, else the default, else [`LookupError`], which
    /// names the variable.
    ///
    /// # Errors
    /// [`LookupError`] where the variable is not set and has no default.
    ///
    /// # Panics
    /// If the default's initializer panics.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{ContextVar, Key, NoDefault};
    /// # #[allow(non_camel_case_types)] struct TRACE_ID {}
    /// # impl Key for TRACE_ID { type Value = u128; type Default = NoDefault; }
    /// # static TRACE_ID: ContextVar<TRACE_ID> = ContextVar::new("trace_id");
    /// let err = TRACE_ID.try_get().unwrap_err();
    /// assert_eq!(err.var(), "trace_id");
    /// let _token = TRACE_ID.set(7);
    /// assert_eq!(TRACE_ID.try_get(), Ok(7));
    /// ```
    #[track_caller]
    pub fn try_get(&self) -> Result<K::Value, LookupError>
    where
        K::Value: Clone,
    {
        // Not in a closure, so that a panic of the default's initializer names the caller.
        match self.lookup() {
            Some(value) => Ok(value),
            None => self
                .default_ref()
                .cloned()
                .ok_or(LookupError { var: self.name }),
        }
    }

    /// The value if it is set in the current context, else `fallback`, which wins over the
    /// variable's own default, as in Python's `var.get(default)`.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{ContextVar, Key, WithDefault};
    /// # #[allow(non_camel_case_types)] struct RETRIES {}
    /// # impl Key for RETRIES { type Value = u32; type Default = WithDefault; }
    /// # static RETRIES: ContextVar<RETRIES> = ContextVar::with_default("retries", || 3);
    /// assert_eq!(RETRIES.get_or(10), 10);
    /// let _token = RETRIES.set(5);
    /// assert_eq!(RETRIES.get_or(10), 5);
    /// ```
    #[must_use]
    pub fn get_or(&self, fallback: K::Value) -> K::Value
    where
        K::Value: Clone,
    {
        self.lookup().unwrap_or(fallback)
    }

    /// Whether the variable is bound in the current context (its default does not count).
    #[must_use]
    pub fn is_set(&self) -> bool {
        current::find(self.key(), |_| ()).is_some()
    }

    /// Binds `value` in the current context until reset or until that context ends.
    /// The value is moved in, never cloned. The returned [`Token`] restores the previous
    /// state with [`reset`](Self::reset).
    ///
    /// # Panics
    /// In a tokio task that runs outside any context (see the crate docs): setting there
    /// would leak the value to the next task on the worker thread. Likewise in a task spawned
    /// with plain `tokio::spawn` under `contextvars::hooks`, which inherits its spawner's
    /// values for reading only. The message names the fix;
    /// [`try_set`](Self::try_set) returns the error instead. (While the thread's locals are
    /// being destroyed, in a value's `Drop` at thread exit, `set` does nothing and returns a
    /// token that resets nothing: a panic there would abort the process.)
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{ContextVar, Key, NoDefault};
    /// # #[allow(non_camel_case_types)] struct USER {}
    /// # impl Key for USER { type Value = String; type Default = NoDefault; }
    /// # static USER: ContextVar<USER> = ContextVar::new("user");
    /// let token = USER.set("ann".to_string());
    /// assert_eq!(USER.get().as_deref(), Some("ann"));
    /// USER.reset(token).unwrap();
    /// assert_eq!(USER.get(), None);
    /// ```
    #[track_caller]
    pub fn set(&'static self, value: K::Value) -> Token<K> {
        let mut token = self.new_token(value);
        match self.bind_token(&mut token) {
            Ok(()) => token,
            // The thread's context is already torn down (a value's `Drop` running at thread
            // exit): there is nothing left to set, and a panic inside a thread-local's
            // destructor would abort the process. The value is dropped; the token resets
            // nothing.
            Err(Unwritable::ThreadExiting) => {
                drop(token.old.take());
                token
            }
            Err(why) => {
                drop(token);
                panic!("{}", SetError::new(why, self.name))
            }
        }
    }

    /// [`set`](Self::set), returning an error where `set` would panic.
    ///
    /// # Errors
    /// [`SetError::NoContext`] in a tokio task that runs outside any context;
    /// [`SetError::Inherited`] in a task whose context the runtime hooks inherited from its
    /// spawner, for reading only; [`SetError::ThreadExiting`] while the thread's locals are
    /// being destroyed.
    pub fn try_set(&'static self, value: K::Value) -> Result<Token<K>, SetError> {
        let mut token = self.new_token(value);
        match self.bind_token(&mut token) {
            Ok(()) => Ok(token),
            // The value is dropped here, with the thread state released.
            Err(why) => Err(SetError::new(why, self.name)),
        }
    }

    /// A token of no context yet, holding `value` where its old value goes: [`bind_token`]
    /// swaps the two in place, so that `set` moves the value once and the old one not at all.
    ///
    /// [`bind_token`]: Self::bind_token
    #[inline]
    fn new_token(&'static self, value: K::Value) -> Token<K> {
        Token::new(self, NO_CONTEXT, Some(Value::new(value, K::copy_proof())))
    }

    /// Binds the value `token` holds in the current context and puts the value it replaces
    /// (if any) in its place, with the context's id. Where there is no context to write to,
    /// `token` is left as it was, still holding the value.
    #[inline]
    fn bind_token(&'static self, token: &mut Token<K>) -> Result<(), Unwritable> {
        let key = self.key();
        current::write_with(token, move |frame, token| {
            token.context = frame.id();
            frame.map.exchange(key, self, &mut token.old);
        })
        .map_err(|(why, _)| why)
    }

    /// Restores the variable to what it was before the `set` that made `token`, including
    /// "unset", which removes it from the context. Out-of-order resets restore that
    /// token's old value. A token can be used once and only on its own variable:
    /// both are compile errors.
    ///
    /// # Errors
    /// [`ResetError`] if the token was made in a different context; nothing changes.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{ContextVar, Key, WithDefault};
    /// # #[allow(non_camel_case_types)] struct LEVEL {}
    /// # impl Key for LEVEL { type Value = u8; type Default = WithDefault; }
    /// # static LEVEL: ContextVar<LEVEL> = ContextVar::with_default("level", || 0);
    /// let first = LEVEL.set(1);
    /// let second = LEVEL.set(2);
    /// assert_eq!(second.old_value(), Some(&1));
    /// LEVEL.reset(second).unwrap();
    /// assert_eq!(LEVEL.get(), 1);
    /// LEVEL.reset(first).unwrap();
    /// assert!(!LEVEL.is_set());
    /// ```
    pub fn reset(&'static self, token: Token<K>) -> Result<(), ResetError> {
        let (context, old) = token.into_parts();
        restore(self, self.key(), context, old)
    }

    /// Sets `value` until the returned guard is dropped, also when unwinding from a panic.
    /// Dropping the guard restores this variable, and only this one, to what it was
    /// before, exactly as [`reset`](Self::reset) does with a token: sets of other variables
    /// made meanwhile stay. `let _ = V.scoped(value)` resets at once (see [`ScopeGuard`]).
    ///
    /// # Panics
    /// As [`set`](Self::set). Dropping the guard in a different context than it was made in
    /// panics too, unless the thread is already panicking (then the guard does nothing): see
    /// [`ScopeGuard`].
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{ContextVar, Key, NoDefault};
    /// # #[allow(non_camel_case_types)] struct USER {}
    /// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
    /// # static USER: ContextVar<USER> = ContextVar::new("user");
    /// {
    ///     let _guard = USER.scoped("ann");
    ///     assert_eq!(USER.get(), Some("ann"));
    /// }
    /// assert_eq!(USER.get(), None);
    /// ```
    #[track_caller]
    pub fn scoped(&'static self, value: K::Value) -> ScopeGuard {
        let (context, old) = self.set(value).into_parts();
        ScopeGuard::new(self, self.key(), context, old)
    }

    /// Runs `f` in a copy of the current context with the variable set to `value`; nothing
    /// `f` sets reaches the caller. The name follows `tokio::task_local!`.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{ContextVar, Key, WithDefault};
    /// # #[allow(non_camel_case_types)] struct DEPTH {}
    /// # impl Key for DEPTH { type Value = u32; type Default = WithDefault; }
    /// # static DEPTH: ContextVar<DEPTH> = ContextVar::with_default("depth", || 0);
    /// let seen = DEPTH.sync_scope(1, || DEPTH.get());
    /// assert_eq!((seen, DEPTH.get()), (1, 0));
    /// ```
    pub fn sync_scope<R>(&'static self, value: K::Value, f: impl FnOnce() -> R) -> R {
        Context::current().with_value(self, value).run(f)
    }

    #[inline]
    pub(crate) fn leaf(&'static self, value: K::Value) -> Leaf {
        Leaf {
            key: self.key(),
            var: self,
            value: Value::new(value, K::copy_proof()),
        }
    }
}

impl<K: Key, D: DefaultKind> ContextVar<K, D> {
    /// The dense id this variable uses as its key in every context.
    pub(crate) fn key(&self) -> u32 {
        match self.key.load(Ordering::Relaxed) {
            0 => self.assign_key(),
            key => key,
        }
    }

    #[cold]
    fn assign_key(&self) -> u32 {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        // Never wraps around: two variables sharing a key would share their bindings.
        let fresh = NEXT
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
                next.checked_add(1)
            })
            .expect("contextvars: more than 4 billion context variables");
        // Another thread may have won the race; everyone uses the winner's key.
        match self
            .key
            .compare_exchange(0, fresh, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => fresh,
            Err(winner) => winner,
        }
    }
}

impl<K: Key> VarMeta for ContextVar<K> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn log(&self) -> bool {
        K::LOG
    }

    fn path(&self) -> &'static str {
        K::path()
    }

    fn hidden(&self) -> bool {
        K::HIDDEN
    }

    fn drops_quietly(&self) -> bool {
        // A `Copy` type has no drop glue at all, stored in place or not.
        K::copy_proof().is_some() || K::quiet_drop_proof().is_some()
    }

    fn fmt_value(
        &self,
        value: &(dyn Any + Send + Sync),
        f: &mut fmt::Formatter<'_>,
    ) -> fmt::Result {
        K::fmt_value(downcast_any::<K::Value>(value), f)
    }
}

impl<K: Key, D: DefaultKind> fmt::Debug for ContextVar<K, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextVar")
            .field("name", &self.name)
            .field("type", &type_name::<K::Value>())
            .finish_non_exhaustive()
    }
}

/// Puts `var` back to `old` (unset for `None`) in the current context, if that is the
/// context `context` names: what [`ContextVar::reset`] and a dropped [`ScopeGuard`] do.
pub(crate) fn restore(
    var: &'static dyn VarMeta,
    key: u32,
    context: u64,
    old: Option<Value>,
) -> Result<(), ResetError> {
    // `old` goes back in place of what the `set` bound; that comes out in `old`, which is
    // dropped here once the thread state is released (as is `old` itself where the write does
    // not happen).
    let mut old = old;
    let replaced = current::write_with(&mut old, move |frame, old| {
        // A token made where no context was left (thread exit) carries `NO_CONTEXT`, which
        // matches no frame.
        if !frame.is(context) {
            return false;
        }
        frame.map.exchange(key, var, old);
        true
    });
    match replaced {
        Ok(true) => Ok(()),
        // Another context's token; nothing can be set in an inherited context, so no token
        // belongs to it either.
        Ok(false) | Err((Unwritable::Inherited, _)) => {
            Err(ResetError::OtherContext { var: var.name() })
        }
        Err((Unwritable::ThreadExiting, _)) => Err(ResetError::ThreadExiting { var: var.name() }),
        Err((Unwritable::NoContext, _)) => Err(ResetError::NoContext { var: var.name() }),
    }
}

/// `ContextVar::with`'s `f` of a variable without a default: called with `Some(value)`.
struct LendSome<F>(F);

impl<T, R, F: FnOnce(Option<&T>) -> R> Lend<T> for LendSome<F> {
    type Output = R;
    fn lend(self, value: &T) -> R {
        (self.0)(Some(value))
    }
}

/// `ContextVar::with`'s `f` of a variable with a default: called with the value.
struct LendValue<F>(F);

impl<T, R, F: FnOnce(&T) -> R> Lend<T> for LendValue<F> {
    type Output = R;
    fn lend(self, value: &T) -> R {
        (self.0)(value)
    }
}

/// A stored value as its variable's type. Each key belongs to one variable, and a variable
/// stores only its own type, so this cannot fail.
pub(crate) fn downcast<T: 'static>(value: &Value) -> &T {
    downcast_any(value.as_any())
}

/// [`downcast`], of a value already seen as `dyn Any`.
pub(crate) fn downcast_any<T: 'static>(value: &(dyn Any + Send + Sync)) -> &T {
    value
        .downcast_ref::<T>()
        .unwrap_or_else(|| wrong_type::<T>())
}

#[cold]
fn wrong_type<T>() -> ! {
    unreachable!(
        "contextvars: a binding of `{}` holds another type",
        type_name::<T>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Copy` value that the map stores in place: `#[context_var]` writes `copy_proof` like
    /// this for every `Copy` type.
    enum Pair {}

    impl Key for Pair {
        type Value = (u64, u64);
        type Default = NoDefault;

        fn copy_proof() -> Option<CopyProof<Self::Value>> {
            Some(CopyProof::new())
        }
    }

    static PAIR: ContextVar<Pair> = ContextVar::new("pair");

    enum Other {}

    impl Key for Other {
        type Value = u64;
        type Default = NoDefault;

        fn copy_proof() -> Option<CopyProof<u64>> {
            Some(CopyProof::new())
        }
    }

    static OTHER: ContextVar<Other> = ContextVar::new("other");

    /// What a context carries may change (the tower layer's base drops its span, say); which
    /// context it is does not: its tokens still reset in it.
    #[cfg(feature = "tracing")]
    #[test]
    fn a_token_resets_in_its_context_after_what_it_carries_changed() {
        let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
        crate::carried::carry_spans();
        let mut ctx = tracing::info_span!("carried").in_scope(Context::current);
        assert!(ctx.carries());
        let token = ctx.run(|| OTHER.set(1));
        let mut ctx = ctx.without_carried();
        assert!(!ctx.carries());
        assert_eq!(ctx.run(|| OTHER.reset(token)), Ok(()));
        assert_eq!(ctx.get(&OTHER), None);
    }

    #[test]
    fn values_stored_in_place_read_back_through_every_path() {
        // Two words on 64-bit targets: stored in place there.
        let mut ctx = Context::new().with_value(&PAIR, (1, 11));
        assert_eq!(
            PAIR.leaf((0, 0)).value.is_inline(),
            std::mem::size_of::<(u64, u64)>() <= 2 * std::mem::size_of::<usize>()
        );
        assert!(OTHER.leaf(0).value.is_inline());
        ctx.run(|| {
            // A miss fills the read cache, a hit reads through it.
            assert_eq!(PAIR.get(), Some((1, 11)));
            assert_eq!(PAIR.get(), Some((1, 11)));
            let snapshot = Context::current();
            // The node is shared with the snapshot: this set copies it, moving the value the
            // cache pointed at into a new node.
            let token = PAIR.set((2, 22));
            assert_eq!(PAIR.get(), Some((2, 22)));
            let other = OTHER.set(7);
            assert_eq!(PAIR.get(), Some((2, 22)));
            assert_eq!(token.old_value(), Some(&(1, 11)));
            assert_eq!(snapshot.get(&PAIR), Some(&(1, 11)));
            assert!(PAIR.with(|pair| pair == Some(&(2, 22))));
            OTHER.reset(other).unwrap();
            PAIR.reset(token).unwrap();
            assert_eq!(PAIR.get(), Some((1, 11)));
            assert_eq!(OTHER.get(), None);
            let debug = format!("{:?}", Context::current());
            assert!(debug.contains("pair"), "{debug}");
        });
        assert_eq!(ctx.get(&PAIR), Some(&(1, 11)));
    }
}
