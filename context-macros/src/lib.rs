//! The procedural macros of [`contextvars`](https://docs.rs/contextvars):
//! `#[context_var]` and `#[preserve_context]`. Use them through that crate, which documents
//! them; generated code reaches the runtime only through `::contextvars::__private` (or the
//! path given with `crate = path`).

#![forbid(unsafe_code)]

mod args;
mod context_var;
mod hooked_runtime;
mod preserve_context;

use proc_macro::TokenStream;

/// Declares a context variable. Documented in the `contextvars` crate.
#[proc_macro_attribute]
pub fn context_var(attr: TokenStream, item: TokenStream) -> TokenStream {
    context_var::expand(attr.into(), item.into()).into()
}

/// Makes an `async fn` capture its caller's context at the call. Documented in the
/// `contextvars` crate.
#[proc_macro_attribute]
pub fn preserve_context(attr: TokenStream, item: TokenStream) -> TokenStream {
    preserve_context::expand(attr.into(), item.into()).into()
}

/// `#[tokio::main]` with the context hooks installed. Documented in the `contextvars` crate.
#[proc_macro_attribute]
pub fn main(attr: TokenStream, item: TokenStream) -> TokenStream {
    hooked_runtime::expand(hooked_runtime::Kind::Main, attr.into(), item.into()).into()
}

/// `#[tokio::test]` with the context hooks installed. Documented in the `contextvars` crate.
#[proc_macro_attribute]
pub fn test(attr: TokenStream, item: TokenStream) -> TokenStream {
    hooked_runtime::expand(hooked_runtime::Kind::Test, attr.into(), item.into()).into()
}
