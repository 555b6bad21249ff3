//! `#[main]` and `#[test]`: an `async fn` run to completion on a tokio runtime with the
//! context hooks installed. The arguments are tokio's own (`flavor`, `worker_threads`,
//! `start_paused`, `unhandled_panic`, `name`, `crate`), with the same meaning and the same
//! checks; the function is rewritten only to build that runtime.
//!
//! ```text
//! // Input:
//! #[contextvars::main(flavor = "multi_thread", worker_threads = 2)]
//! async fn main() -> R { body }
//! // Output:
//! fn main() -> R {
//!     let body = async { body };
//!     {
//!         let mut builder = ::tokio::runtime::Builder::new_multi_thread();
//!         builder.enable_all();
//!         builder.worker_threads(2);
//!         ::contextvars::__private::install_hooks!(&mut builder);
//!         return builder.build().expect("...").block_on(body);
//!     }
//! }
//! ```
//!
//! `#[test]` adds `#[::core::prelude::v1::test]` and defaults to the current-thread flavor.
//! Whether tokio's hooks exist (`--cfg tokio_unstable`, feature `hooks`) is known only when
//! the expansion compiles: `install_hooks!` is then either the call or one clear error.

use proc_macro2::{Ident, Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, ItemFn, Lit, LitInt, LitStr, MetaNameValue, Path, Token};

/// Which attribute is expanding.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Main,
    Test,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Main => "contextvars::main",
            Kind::Test => "contextvars::test",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    MultiThread,
    CurrentThread,
    Local,
}

const ACCEPTED: &str =
    "`flavor`, `worker_threads`, `start_paused`, `unhandled_panic`, `name`, `crate`";

/// The parsed arguments, each with the tokens to blame for it.
#[derive(Default)]
struct Config {
    flavor: Option<(Flavor, LitStr)>,
    worker_threads: Option<LitInt>,
    start_paused: Option<(bool, Span)>,
    unhandled_panic: Option<(Ident, LitStr)>,
    name: Option<LitStr>,
    krate: Option<Path>,
}

pub(crate) fn expand(kind: Kind, args: TokenStream, item: TokenStream) -> TokenStream {
    let function: ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        Err(error) => {
            let mut item = item;
            item.extend(error.to_compile_error());
            return item;
        }
    };
    match parse(args)
        .and_then(|config| validate(kind, &function, config))
        .map(|config| generate(kind, function.clone(), &config))
    {
        Ok(tokens) => tokens,
        Err(error) => fallback(function, &error),
    }
}

/// `name = value, …` into a [`Config`], rejecting unknown, repeated and ill-typed arguments.
fn parse(args: TokenStream) -> syn::Result<Config> {
    let args = Punctuated::<MetaNameValue, Token![,]>::parse_terminated.parse2(args)?;
    let mut config = Config::default();
    for arg in args {
        let key = arg
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        let fresh = match key.as_str() {
            "flavor" => config.flavor.replace(flavor_arg(&arg.value)?).is_none(),
            "worker_threads" => config
                .worker_threads
                .replace(worker_threads_arg(&arg.value)?)
                .is_none(),
            "start_paused" => config
                .start_paused
                .replace(start_paused_arg(&arg.value)?)
                .is_none(),
            "unhandled_panic" => config
                .unhandled_panic
                .replace(unhandled_panic_arg(&arg.value)?)
                .is_none(),
            "name" => config.name.replace(string(&arg.value, "name")?).is_none(),
            "crate" => config.krate.replace(crate_arg(&arg.value)?).is_none(),
            _ => {
                return Err(syn::Error::new_spanned(
                    &arg.path,
                    format!("unknown argument; expected one of: {ACCEPTED}"),
                ));
            }
        };
        if !fresh {
            return Err(syn::Error::new_spanned(
                &arg.path,
                format!("`{key}` set twice"),
            ));
        }
    }
    Ok(config)
}

fn flavor_arg(value: &Expr) -> syn::Result<(Flavor, LitStr)> {
    let text = string(value, "flavor")?;
    let flavor = match text.value().as_str() {
        "multi_thread" => Flavor::MultiThread,
        "current_thread" => Flavor::CurrentThread,
        "local" => Flavor::Local,
        _ => {
            return Err(syn::Error::new_spanned(
                &text,
                "unknown flavor: expected \"multi_thread\", \"current_thread\" or \"local\"",
            ));
        }
    };
    Ok((flavor, text))
}

fn worker_threads_arg(value: &Expr) -> syn::Result<LitInt> {
    let Expr::Lit(ExprLit {
        lit: Lit::Int(count),
        ..
    }) = value
    else {
        return Err(syn::Error::new_spanned(
            value,
            "`worker_threads` takes an integer: `worker_threads = 4`",
        ));
    };
    if count.base10_parse::<usize>()? == 0 {
        return Err(syn::Error::new_spanned(
            count,
            "`worker_threads` may not be 0",
        ));
    }
    Ok(count.clone())
}

fn start_paused_arg(value: &Expr) -> syn::Result<(bool, Span)> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(paused),
            ..
        }) => Ok((paused.value, paused.span)),
        _ => Err(syn::Error::new_spanned(
            value,
            "`start_paused` takes `true` or `false`",
        )),
    }
}

fn unhandled_panic_arg(value: &Expr) -> syn::Result<(Ident, LitStr)> {
    let text = string(value, "unhandled_panic")?;
    let variant = match text.value().as_str() {
        "ignore" => "Ignore",
        "shutdown_runtime" => "ShutdownRuntime",
        _ => {
            return Err(syn::Error::new_spanned(
                &text,
                "unknown `unhandled_panic` behaviour: expected \"ignore\" or \"shutdown_runtime\"",
            ));
        }
    };
    Ok((Ident::new(variant, text.span()), text))
}

fn crate_arg(value: &Expr) -> syn::Result<Path> {
    let text = string(value, "crate")?;
    text.parse::<Path>().map_err(|_| {
        syn::Error::new_spanned(
            &text,
            "`crate` takes the path of tokio: `crate = \"tokio\"`",
        )
    })
}

/// A string literal argument.
fn string(value: &Expr, key: &str) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(text),
            ..
        }) => Ok(text.clone()),
        _ => Err(syn::Error::new_spanned(
            value,
            format!("`{key}` takes a string literal: `{key} = \"...\"`"),
        )),
    }
}

/// Checks the arguments against each other and against the function.
fn validate(kind: Kind, function: &ItemFn, config: Config) -> syn::Result<Config> {
    if function.sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            function.sig.fn_token,
            format!(
                "`#[{}]` runs an `async fn`: add `async` before `fn`",
                kind.name()
            ),
        ));
    }
    if kind == Kind::Main && function.sig.ident == "main" && !function.sig.inputs.is_empty() {
        return Err(syn::Error::new_spanned(
            &function.sig.inputs,
            "`main` takes no arguments",
        ));
    }
    // No `let` chains: the declared minimum Rust (1.85) does not have them.
    let test_attr = function
        .attrs
        .iter()
        .find(|attr| attr.path().is_ident("test"));
    if let (Kind::Test, Some(attr)) = (kind, test_attr) {
        return Err(syn::Error::new_spanned(
            attr,
            "`#[contextvars::test]` already makes this a test: remove `#[test]`",
        ));
    }
    let flavor = flavor(kind, &config);
    let needs = |option: &str, wanted: &str| {
        format!(
            "`{option}` needs the {wanted} flavor: `#[{}(flavor = \"{wanted}\", {option} = ...)]`",
            kind.name()
        )
    };
    if let (true, Some(count)) = (flavor != Flavor::MultiThread, &config.worker_threads) {
        return Err(syn::Error::new_spanned(
            count,
            needs("worker_threads", "multi_thread"),
        ));
    }
    if flavor == Flavor::MultiThread {
        if let Some((_, span)) = config.start_paused {
            return Err(syn::Error::new(
                span,
                needs("start_paused", "current_thread"),
            ));
        }
        if let Some((_, text)) = &config.unhandled_panic {
            return Err(syn::Error::new_spanned(
                text,
                needs("unhandled_panic", "current_thread"),
            ));
        }
    }
    Ok(config)
}

fn flavor(kind: Kind, config: &Config) -> Flavor {
    config.flavor.as_ref().map_or(
        match kind {
            Kind::Main => Flavor::MultiThread,
            Kind::Test => Flavor::CurrentThread,
        },
        |(flavor, _)| *flavor,
    )
}

/// The function, synchronous, building the runtime and blocking on its body.
fn generate(kind: Kind, mut function: ItemFn, config: &Config) -> TokenStream {
    let call_site = Span::call_site();
    let tokio = config
        .krate
        .as_ref()
        .map_or_else(|| quote!(::tokio), ToTokens::to_token_stream);
    // Names the user's body cannot see or shadow.
    let builder = Ident::new("builder", Span::mixed_site());
    let body = Ident::new("body", Span::mixed_site());

    let constructor = match flavor(kind, config) {
        Flavor::MultiThread => quote!(new_multi_thread),
        Flavor::CurrentThread | Flavor::Local => quote!(new_current_thread),
    };
    let mut options = TokenStream::new();
    if let Some(count) = &config.worker_threads {
        options.extend(quote!(#builder.worker_threads(#count);));
    }
    if let Some((paused, span)) = config.start_paused {
        let paused = syn::LitBool::new(paused, span);
        options.extend(quote!(#builder.start_paused(#paused);));
    }
    if let Some((variant, _)) = &config.unhandled_panic {
        options
            .extend(quote!(#builder.unhandled_panic(#tokio::runtime::UnhandledPanic::#variant);));
    }
    if let Some(name) = &config.name {
        options.extend(quote!(#builder.name(#name);));
    }
    let build = if flavor(kind, config) == Flavor::Local {
        quote!(build_local(::core::default::Default::default()))
    } else {
        quote!(build())
    };

    function.sig.asyncness = None;
    let block = &function.block;
    let output = match &function.sig.output {
        syn::ReturnType::Default => quote!(()),
        syn::ReturnType::Type(_, ty) => ty.to_token_stream(),
    };
    // A test's body is pinned and type-erased, so that every test blocks on one future type
    // (as tokio does, for compile times).
    let future = if kind == Kind::Test {
        quote! {
            let #body = async #block;
            let #body = ::core::pin::pin!(#body);
            let #body: ::core::pin::Pin<&mut dyn ::core::future::Future<Output = #output>> = #body;
        }
    } else {
        quote!(let #body = async #block;)
    };
    let install =
        quote_spanned!(call_site=> ::contextvars::__private::install_hooks!(&mut #builder););
    let new_block = quote! {
        {
            #future
            #[allow(clippy::expect_used, clippy::needless_return)]
            {
                let mut #builder = #tokio::runtime::Builder::#constructor();
                #builder.enable_all();
                #options
                #install
                return #builder
                    .#build
                    .expect("Failed building the Runtime")
                    .block_on(#body);
            }
        }
    };
    function.block = syn::parse2(new_block).expect("a block");
    let test = (kind == Kind::Test).then(|| quote!(#[::core::prelude::v1::test]));
    quote! {
        #test
        #function
    }
}

/// After an error: the error, and the function made synchronous with its body set aside, so
/// that the mistake is the only error and the item still exists for the IDE.
fn fallback(mut function: ItemFn, error: &syn::Error) -> TokenStream {
    let error = error.to_compile_error();
    function.sig.asyncness = None;
    if function.sig.ident == "main" {
        // Arguments of `main` are the mistake reported; kept, they would be a second error.
        function.sig.inputs.clear();
    }
    function.block = syn::parse_quote!({ ::core::unreachable!() });
    quote! {
        #[allow(dead_code, unreachable_code)]
        #function
        #error
    }
}
