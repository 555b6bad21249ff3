//! `#[preserve_context]`: an `async fn` whose future captures the caller's context when the
//! function is *called*, and runs (and is dropped) inside it on every poll.
//!
//! ```text
//! // Input:
//! #[preserve_context]
//! pub async fn handle(&self, req: &str, _: Permit) -> usize {
//!     self.count(req).await
//! }
//!
//! // Output:
//! pub fn handle<'__elided0, '__elided1>(
//!     &'__elided0 self,
//!     req: &'__elided1 str,
//!     __arg2: Permit,
//! ) -> impl ::core::future::Future<Output = usize>
//!        + ::contextvars::__private::Captures<(
//!            &'__elided0 (),
//!            &'__elided1 (),
//!            ::core::marker::PhantomData<Self>,
//!        )> {
//!     #[deny(elided_lifetimes_in_paths)]
//!     let _ = |_: &'__elided1 str, _: Permit| {};
//!     let __context = ::contextvars::__private::Context::current();
//!     ::contextvars::__private::FutureExt::with_context(
//!         async move {
//!             let __self = self;
//!             let req = req;
//!             let __arg2 = __arg2;
//!             let _ = __arg2;
//!             if false {
//!                 return ::contextvars::__private::unreachable::<usize>();
//!             }
//!             let __ret: usize = { __self.count(req).await };
//!             __ret
//!         },
//!         __context,
//!     )
//! }
//! ```
//!
//! - The signature is re-emitted piece by piece; only `async` goes, elided lifetimes get
//!   names, and `mut` moves from the parameters to their rebinding inside the block.
//! - Every argument is moved into the future and dropped when the body ends, as with an
//!   `async fn`: simple bindings rebind themselves, patterns (`_`, tuples, structs) go
//!   through `__argN`, and `self` is renamed `__self` in the body (nested items keep theirs).
//! - `Captures<…>` names every lifetime of the inputs (and `Self` for methods) so that the
//!   future may hold them in edition 2021, where `impl Trait` captures only the lifetimes
//!   its bounds name; in edition 2024 it changes nothing.
//! - `if false { return … }` fixes the block's output type before the body is checked, so
//!   `?` and `return` in the body see the declared return type; `let __ret: R = body` puts a
//!   type error on the user's expression, not on the signature.
//! - The unused closure over the argument types rejects lifetimes hidden in paths
//!   (`Ref<T>`), which no macro can name, with the compiler's own fix (`Ref<'_, T>`).
//! - Hidden names (`__context`, `__argN`, `__ret`, `__self`) are `Span::mixed_site()`: the
//!   body cannot name them.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{
    AttrStyle, Attribute, Block, FnArg, Ident, Pat, ReturnType, Signature, Token, Type, Visibility,
};

use crate::args::{self, Arg, Args};

mod lifetimes;
mod receiver;

/// The item under the attribute: a function, with its body or (in a trait) without.
struct Function {
    attrs: Vec<Attribute>,
    vis: Visibility,
    sig: Signature,
    /// `None` for a declaration `fn f();` in a trait.
    body: Option<Block>,
    /// The `;` of a declaration.
    semi: Option<Token![;]>,
}

impl Parse for Function {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        if input.fork().parse::<Signature>().is_err() {
            let found = input.fork().parse::<TokenTree>().map(|t| t.to_string());
            let what = match found.as_deref() {
                Ok(
                    kw @ ("static" | "const" | "struct" | "enum" | "union" | "type" | "trait"
                    | "impl" | "mod" | "use" | "extern" | "let"),
                ) => format!("a `{kw}` item"),
                _ => "this item".to_string(),
            };
            return Err(input.error(format!(
                "#[preserve_context] goes on an `async fn`, not on {what}"
            )));
        }
        let sig: Signature = input.parse()?;
        if input.peek(Token![;]) {
            let semi = input.parse()?;
            return Ok(Function {
                attrs,
                vis,
                sig,
                body: None,
                semi: Some(semi),
            });
        }
        let content;
        let brace = syn::braced!(content in input);
        // Inner attributes (`#![allow(..)]` in the body) apply to the function: keep them on
        // it, as outer ones.
        for mut attr in content.call(Attribute::parse_inner)? {
            attr.style = AttrStyle::Outer;
            attrs.push(attr);
        }
        let stmts = content.call(Block::parse_within)?;
        Ok(Function {
            attrs,
            vis,
            sig,
            body: Some(Block {
                brace_token: brace,
                stmts,
            }),
            semi: None,
        })
    }
}

impl ToTokens for Function {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        tokens.extend(self.attrs.iter().map(ToTokens::to_token_stream));
        self.vis.to_tokens(tokens);
        self.sig.to_tokens(tokens);
        self.body.to_tokens(tokens);
        self.semi.to_tokens(tokens);
    }
}

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Vec::new();
    let args = args::parse(attr, "preserve_context", &[Arg::Crate]).unwrap_or_else(|err| {
        errors.push(err);
        Args::default()
    });
    let output = match syn::parse2::<Function>(item.clone()) {
        Ok(function) => match validate(&function) {
            Ok(()) => rewrite(function, &args),
            // Leave the function as it was, so the mistake gives this one error.
            Err(err) => {
                errors.push(err);
                function.into_token_stream()
            }
        },
        Err(err) => {
            errors.push(err);
            item
        }
    };
    let errors = errors.iter().map(syn::Error::to_compile_error);
    quote!(#(#errors)* #output)
}

/// What the rewrite needs: an `async fn` with a body.
fn validate(function: &Function) -> syn::Result<()> {
    let sig = &function.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span,
            "#[preserve_context] goes on an `async fn`: make this function `async` (it \
             captures the caller's context for the future an `async fn` returns)",
        ));
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        if let Type::Never(never) = &**ty {
            return Err(syn::Error::new(
                never.bang_token.span,
                "#[preserve_context] cannot rewrite an `async fn` that returns `!`: the \
                 future's `Output = !` needs the unstable never type; return \
                 `std::convert::Infallible` instead",
            ));
        }
    }
    if let Some(semi) = function.semi {
        return Err(syn::Error::new(
            semi.span,
            "#[preserve_context] needs the function's body: put it on the `async fn` in the \
             `impl`, not on the trait's declaration",
        ));
    }
    Ok(())
}

fn rewrite(function: Function, args: &Args) -> TokenStream {
    let Function {
        attrs,
        vis,
        mut sig,
        body,
        ..
    } = function;
    let mut block = body.expect("validated: the function has a body");
    let private = args.private();

    let lifetimes = lifetimes::name_lifetimes(&mut sig);
    let (rebinds, has_receiver) = move_arguments(&mut sig);
    if has_receiver {
        receiver::rename_self(&mut block);
    }
    let body = typed_body(&sig.output, &block, args);

    let mut captured: Vec<TokenStream> = lifetimes
        .iter()
        .map(|lifetime| quote!(&#lifetime ()))
        .collect();
    if has_receiver || sig.inputs.iter().any(mentions_self_type) {
        captured.push(quote!(::core::marker::PhantomData<Self>));
    }
    let bound = (!captured.is_empty()).then(|| quote!(+ #private::Captures<(#(#captured,)*)>));
    let output = match &sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, ty) => quote!(#ty),
    };
    let span = sig.output.span();
    let future = quote_spanned!(span=> impl ::core::future::Future<Output = #output> #bound);
    sig.output = ReturnType::Type(Token![->](span), Box::new(Type::Verbatim(future)));
    sig.asyncness = None;

    let context = Ident::new("__context", Span::mixed_site());
    let check = hidden_lifetime_check(&sig);
    let async_block = quote_spanned! {block.brace_token.span.join()=>
        async move {
            #(#rebinds)*
            #body
        }
    };
    quote! {
        #(#attrs)*
        #vis #sig {
            #check
            let #context = #private::Context::current();
            #private::FutureExt::with_context(#async_block, #context)
        }
    }
}

/// Rejects hidden lifetimes in argument types (`Ref<T>` for `Ref<'_, T>`), which no macro
/// can see and name: in edition 2021 the future could not hold them. The check is an unused
/// closure taking the arguments' types under `deny(elided_lifetimes_in_paths)`, so that the
/// error and its fix land on the user's type, in both editions alike; the body keeps the
/// user's own lint levels.
fn hidden_lifetime_check(sig: &Signature) -> Option<TokenStream> {
    let params: Vec<TokenStream> = sig
        .inputs
        .iter()
        .filter_map(|input| match input {
            FnArg::Typed(typed) if !contains_impl_trait(&typed.ty) => {
                let cfgs = cfg_attrs(&typed.attrs);
                let ty = &typed.ty;
                Some(quote!(#(#cfgs)* _: #ty))
            }
            _ => None,
        })
        .collect();
    (!params.is_empty()).then(|| {
        quote! {
            #[deny(elided_lifetimes_in_paths)]
            let _ = |#(#params),*| {};
        }
    })
}

/// The `#[cfg]` attributes among `attrs`.
fn cfg_attrs(attrs: &[Attribute]) -> Vec<&Attribute> {
    attrs
        .iter()
        .filter(|attr| attr.path().is_ident("cfg"))
        .collect()
}

/// Makes every argument move into the future, as an `async fn`'s do: the signature takes
/// plain names (without `mut`), and the block rebinds the user's patterns. Returns the
/// rebinding statements and whether there is a receiver (rebound as `__self`).
fn move_arguments(sig: &mut Signature) -> (Vec<TokenStream>, bool) {
    let mixed = Span::mixed_site();
    let mut rebinds = Vec::new();
    let mut has_receiver = false;
    for (index, input) in sig.inputs.iter_mut().enumerate() {
        match input {
            FnArg::Receiver(recv) => {
                let mutability = if recv.reference.is_none() {
                    recv.mutability.take()
                } else {
                    None
                };
                let renamed = Ident::new("__self", mixed);
                let self_token = recv.self_token;
                rebinds.push(quote!(let #mutability #renamed = #self_token;));
                has_receiver = true;
            }
            FnArg::Typed(typed) => {
                // A parameter removed by `#[cfg]` takes its rebinding with it.
                let cfgs = cfg_attrs(&typed.attrs);
                match &mut *typed.pat {
                    Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => {
                        let mutability = pat.mutability.take();
                        let ident = &pat.ident;
                        rebinds.push(quote!(#(#cfgs)* let #mutability #ident = #ident;));
                    }
                    pat => {
                        // `_` and destructuring: keep the whole argument alive until the
                        // body ends, then bind the pattern from it.
                        let arg = format_ident!("__arg{}", index, span = mixed);
                        let user_pat = std::mem::replace(pat, Pat::Verbatim(arg.to_token_stream()));
                        rebinds.push(quote! {
                            #(#cfgs)* let #arg = #arg;
                            #(#cfgs)* let #user_pat = #arg;
                        });
                    }
                }
            }
        }
    }
    (rebinds, has_receiver)
}

/// The body, typed with the declared return type where that can be written in a body (not
/// `impl Trait`): a type error then points at the user's expression, and `?` and `return`
/// know the type from the start.
fn typed_body(output: &ReturnType, block: &Block, args: &Args) -> TokenStream {
    match output {
        ReturnType::Type(_, ty) if !contains_impl_trait(ty) => {
            let ret = Ident::new("__ret", Span::mixed_site());
            // Spanned with the return type, which a mismatch's note then points at.
            let private = args.private_at(ty.span());
            let hint = quote_spanned! {ty.span()=>
                if false {
                    return #private::unreachable::<#ty>();
                }
            };
            quote! {
                #hint
                let #ret: #ty = #block;
                #ret
            }
        }
        _ => quote!(#block),
    }
}

/// Whether an argument's type mentions `Self` (then the method's `Self` must be captured).
fn mentions_self_type(input: &FnArg) -> bool {
    struct Finder(bool);
    impl Visit<'_> for Finder {
        fn visit_ident(&mut self, ident: &Ident) {
            self.0 |= ident == "Self";
        }
    }
    let mut finder = Finder(false);
    if let FnArg::Typed(typed) = input {
        finder.visit_type(&typed.ty);
    }
    finder.0
}

/// Whether a type contains `impl Trait`, which cannot be written inside the body.
fn contains_impl_trait(ty: &Type) -> bool {
    struct Finder(bool);
    impl Visit<'_> for Finder {
        fn visit_type_impl_trait(&mut self, _: &syn::TypeImplTrait) {
            self.0 = true;
        }
    }
    let mut finder = Finder(false);
    finder.visit_type(ty);
    finder.0
}
