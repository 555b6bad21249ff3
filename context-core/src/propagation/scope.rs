//! `scope`: a future that runs in a copy of the context it is first polled in, with one
//! variable set.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use pin_project_lite::pin_project;

use crate::context::Context;
use crate::current;
use crate::future::WithContext;
use crate::map::Leaf;
use crate::var::{ContextVar, Key};

pin_project! {
    /// The future made by [`ContextVar::scope`]: it runs its inner future in a copy of the
    /// context it is first polled in, with the variable set.
    ///
    /// The copy is taken at the first poll, not when the scope is made, so scopes nested
    /// inside one another compose whatever order they were built in: in
    /// `B.scope(b, A.scope(a, future))`, the inner scope is made first but polled inside the
    /// outer one, and `future` sees both values. From then on the scope's context is its own:
    /// what the inner future sets stays there, across `.await`s and whichever thread polls
    /// it, and never reaches the code that polls it. The inner future is dropped inside that
    /// context too, even if the scope is dropped before it was ever polled (the copy is then
    /// taken at the drop).
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{ContextVar, Key, NoDefault};
    /// # #[allow(non_camel_case_types)] struct TENANT {}
    /// # impl Key for TENANT { type Value = &'static str; type Default = NoDefault; }
    /// # static TENANT: ContextVar<TENANT> = ContextVar::new("tenant");
    /// # #[allow(non_camel_case_types)] struct USER {}
    /// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
    /// # static USER: ContextVar<USER> = ContextVar::new("user");
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let inner = USER.scope("ann", async { (TENANT.get(), USER.get()) });
    /// let seen = TENANT.scope("acme", inner).await;
    /// assert_eq!(seen, (Some("acme"), Some("ann")));
    /// assert_eq!((TENANT.get(), USER.get()), (None, None));
    /// # });
    /// ```
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct Scope<F> {
        // The variable and its value, until the first poll binds them in the copy.
        binding: Option<Leaf>,
        // Runs in an empty context until the first poll gives it the copy.
        #[pin]
        running: WithContext<F>,
    }

    impl<F> PinnedDrop for Scope<F> {
        fn drop(this: Pin<&mut Self>) {
            // Never polled: the inner future is still dropped inside its context, which the
            // running wrapper's own drop enters.
            this.start();
        }
    }
}

impl<F> Scope<F> {
    /// Takes the copy of the current context, with the value set, if not done yet.
    fn start(self: Pin<&mut Self>) {
        let this = self.project();
        if let Some(binding) = this.binding.take() {
            let mut copy = Context::current();
            // Just entered, so writable; a value it replaces is dropped inside the copy (it
            // is shared with the context it was copied from, so this only lowers a count).
            copy.run(|| drop(current::write(|frame| frame.map.insert(binding))));
            *this.running.context_mut() = copy;
        }
    }
}

impl<F: Future> Future for Scope<F> {
    type Output = F::Output;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        self.as_mut().start();
        self.project().running.poll(cx)
    }
}

impl<F: fmt::Debug> fmt::Debug for Scope<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("Scope");
        if let Some(binding) = &self.binding {
            out.field("var", &binding.var.name());
        }
        out.field("running", &self.running).finish()
    }
}

// `scope` lives here, beside the future it returns, so that variables (the API layer) need
// nothing from propagation.
impl<K: Key> ContextVar<K> {
    /// A future that runs `future` in a copy of the current context with the variable set to
    /// `value`; nothing it sets reaches the caller. The name and the timing follow
    /// `tokio::task_local!`: the copy is taken when the returned future is **first polled**,
    /// not at this call, so nested scopes compose however they were built or spawned
    /// (`B.scope(b, A.scope(a, future))` sees both values). Works in any task, including one
    /// spawned without a context, where the copy is empty but for this variable.
    ///
    /// To capture the caller's context at the call instead, for a future that is polled
    /// later somewhere else, use
    /// [`in_current_context`](crate::FutureExt::in_current_context) (or
    /// `#[preserve_context]` on an `async fn`).
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{ContextVar, Key, NoDefault};
    /// # #[allow(non_camel_case_types)] struct REQUEST_ID {}
    /// # impl Key for REQUEST_ID { type Value = u64; type Default = NoDefault; }
    /// # static REQUEST_ID: ContextVar<REQUEST_ID> = ContextVar::new("request_id");
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let seen = REQUEST_ID.scope(7, async { REQUEST_ID.get() }).await;
    /// assert_eq!((seen, REQUEST_ID.get()), (Some(7), None));
    /// # });
    /// ```
    pub fn scope<F: Future>(&'static self, value: K::Value, future: F) -> Scope<F> {
        Scope {
            binding: Some(self.leaf(value)),
            running: WithContext::new(future, Context::new()),
        }
    }
}
