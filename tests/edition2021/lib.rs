//! A user crate of edition 2021. There `impl Trait` captures only the lifetimes its bounds
//! name, so every form below holds a borrow that the rewrite of `#[preserve_context]` must
//! name for the future: elided references, `'_`, receivers, the lifetimes inside `Self`.
//! `tests/test_edition2021.rs` builds it as a crate of its own and runs its tests.

#![deny(warnings, rust_2018_idioms)]

use std::cell::Ref;
use std::fmt::Display;
use std::pin::Pin;
use std::sync::Arc;

use contextvars::{context_var, preserve_context};

#[context_var]
pub static REQUEST: u32;

/// Elided references, the output's lifetime taken from the only input one.
#[preserve_context]
pub async fn first_word(text: &str) -> &str {
    tokio::task::yield_now().await;
    text.split(' ').next().unwrap_or_default()
}

/// Several elided lifetimes, a named one, `'_` in a path, `impl Trait` holding a borrow.
#[preserve_context]
pub async fn join<'a>(
    head: &'a str,
    tail: std::slice::Iter<'_, &str>,
    sep: impl AsRef<str> + '_,
    last: &dyn Display,
) -> String {
    tokio::task::yield_now().await;
    let mut out = head.to_string();
    for part in tail {
        out.push_str(sep.as_ref());
        out.push_str(part);
    }
    out.push_str(&last.to_string());
    out
}

/// A written path lifetime (the form the macro asks for: `Ref<'_, T>`, not `Ref<T>`).
#[preserve_context]
pub async fn read_cell(cell: Ref<'_, u32>) -> u32 {
    *cell + REQUEST.get().unwrap_or_default()
}

/// Generics and a `where` clause.
#[preserve_context]
pub async fn largest<'a, T>(items: &'a [T]) -> Option<&'a T>
where
    T: Ord,
{
    tokio::task::yield_now().await;
    items.iter().max()
}

/// `unsafe`, with attributes and docs.
///
/// # Safety
/// `ptr` must point at a live `u32` until the future completes.
#[inline]
#[preserve_context]
pub async unsafe fn read_raw(ptr: *const u32) -> u32 {
    tokio::task::yield_now().await;
    // SAFETY: the caller keeps `ptr` live.
    unsafe { *ptr }
}

/// A type that holds a borrow: its methods' futures hold `'a` through `Self`.
pub struct Borrowed<'a> {
    pub text: &'a str,
    pub hits: u32,
}

impl<'a> Borrowed<'a> {
    /// An associated function without a receiver.
    #[preserve_context]
    pub async fn new(text: &'a str) -> Self {
        Borrowed { text, hits: 0 }
    }

    #[preserve_context]
    pub async fn text(&self) -> &'a str {
        tokio::task::yield_now().await;
        self.text
    }

    #[preserve_context]
    pub async fn hit(&mut self) -> u32 {
        tokio::task::yield_now().await;
        self.hits += 1;
        self.hits
    }

    #[preserve_context]
    pub async fn into_text(self) -> &'a str {
        self.text
    }

    #[preserve_context]
    pub async fn upper(mut self) -> String {
        self.text = "changed";
        self.text.to_uppercase()
    }

    #[preserve_context]
    pub async fn shared(self: Arc<Self>) -> usize {
        Arc::strong_count(&self) + self.text.len()
    }

    #[preserve_context]
    pub async fn pinned(mut self: Pin<&mut Self>) -> u32 {
        tokio::task::yield_now().await;
        self.hits += 10;
        self.hits
    }

    #[preserve_context]
    pub async fn longer(&self, other: &Borrowed<'a>) -> &'a str {
        if other.text.len() > self.text.len() {
            other.text
        } else {
            self.text
        }
    }
}

/// A trait that declares `async fn`, implemented with the attribute.
#[allow(async_fn_in_trait)]
pub trait Service {
    async fn call(&self, request: &str) -> usize;
}

impl Service for Borrowed<'_> {
    #[preserve_context]
    async fn call(&self, request: &str) -> usize {
        tokio::task::yield_now().await;
        self.text.len() + request.len() + REQUEST.get().unwrap_or_default() as usize
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::pin::pin;

    use contextvars::Context;

    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn every_form_runs_in_the_context_of_its_call() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let text = String::from("hello world");
            assert_eq!(first_word(&text).await, "hello");
            let parts = ["b", "c"];
            assert_eq!(join("a", parts.iter(), "-", &1).await, "a-b-c1");
            assert_eq!(largest(&[3, 9, 4]).await, Some(&9));
            let value = 42;
            // SAFETY: `value` outlives the future.
            assert_eq!(unsafe { read_raw(&value) }.await, 42);

            let mut borrowed = Borrowed::new(&text).await;
            assert_eq!(borrowed.text().await, "hello world");
            assert_eq!(borrowed.hit().await, 1);
            assert_eq!(pin!(Borrowed::new("p").await).as_mut().pinned().await, 10);
            assert_eq!(Arc::new(Borrowed::new("ab").await).shared().await, 3);
            assert_eq!(
                borrowed.longer(&Borrowed::new("x").await).await,
                "hello world"
            );
            let fut = Context::new()
                .with_value(&REQUEST, 5)
                .run(|| borrowed.call("req"));
            assert_send(&fut);
            assert_eq!(fut.await, 11 + 3 + 5);
            assert_eq!(Borrowed::new("lower").await.upper().await, "CHANGED");
            assert_eq!(borrowed.into_text().await, "hello world");
        });
    }

    #[test]
    fn a_future_holding_a_cell_borrow_reads_the_call_time_context() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let cell = RefCell::new(1);
        let fut = Context::new()
            .with_value(&REQUEST, 2)
            .run(|| read_cell(cell.borrow()));
        let _token = REQUEST.set(100);
        assert_eq!(rt.block_on(fut), 3);
    }
}
