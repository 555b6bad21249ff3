//! Threads that inherit the spawner's context.
//!
//! A thread started with [`std::thread::spawn`] starts with an empty context, as in Python.
//! [`spawn`] and [`Builder`] start it in a copy of the spawner's context instead, like Python
//! 3.14's `Thread(context=copy_context())`.

use std::io;
use std::thread::JoinHandle;

use crate::context::Context;

/// [`std::thread::spawn`], with `f` running in a copy of the caller's context taken at the
/// call. What the thread sets stays in the thread.
///
/// # Panics
/// As [`std::thread::spawn`]: if the OS fails to create a thread ([`Builder::spawn`] returns
/// the error instead).
///
/// ```
/// # use context_core as contextvars;
/// # use contextvars::{ContextVar, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct USER {}
/// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
/// # static USER: ContextVar<USER> = ContextVar::new("user");
/// let _token = USER.set("ann");
/// let inherited = contextvars::thread::spawn(|| USER.get()).join().unwrap();
/// let plain = std::thread::spawn(|| USER.get()).join().unwrap();
/// assert_eq!((inherited, plain), (Some("ann"), None));
/// ```
pub fn spawn<F, T>(f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::spawn(Context::current().run_later(f))
}

/// [`std::thread::Builder`] whose threads start in a copy of the spawner's context, or in a
/// context you give.
///
/// ```
/// # use context_core as contextvars;
/// # use contextvars::{Context, ContextVar, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct USER {}
/// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
/// # static USER: ContextVar<USER> = ContextVar::new("user");
/// let handle = contextvars::thread::Builder::new()
///     .name("worker".into())
///     .context(Context::new().with_value(&USER, "ann"))
///     .spawn(|| (std::thread::current().name().map(String::from), USER.get()))
///     .unwrap();
/// assert_eq!(handle.join().unwrap(), (Some("worker".into()), Some("ann")));
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `spawn` is called"]
pub struct Builder {
    inner: std::thread::Builder,
    context: Option<Context>,
}

impl Builder {
    /// A builder like [`std::thread::Builder::new`].
    pub fn new() -> Self {
        Builder {
            inner: std::thread::Builder::new(),
            context: None,
        }
    }

    /// Names the thread, as [`std::thread::Builder::name`].
    pub fn name(self, name: String) -> Self {
        Builder {
            inner: self.inner.name(name),
            ..self
        }
    }

    /// Sets the stack size, as [`std::thread::Builder::stack_size`].
    pub fn stack_size(self, size: usize) -> Self {
        Builder {
            inner: self.inner.stack_size(size),
            ..self
        }
    }

    /// Runs the thread in `context` instead of a copy of the spawner's.
    pub fn context(self, context: Context) -> Self {
        Builder {
            context: Some(context),
            ..self
        }
    }

    /// Spawns the thread, as [`std::thread::Builder::spawn`].
    ///
    /// # Errors
    /// Those of [`std::thread::Builder::spawn`]: the OS failed to create the thread.
    pub fn spawn<F, T>(self, f: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let context = self.context.unwrap_or_else(Context::current);
        self.inner.spawn(context.run_later(f))
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}
