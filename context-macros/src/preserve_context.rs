//! `#[preserve_context]`: an `async fn` whose future captures the caller's context when the
//! function is *called*, and runs (and is dropped) inside it on every poll (B27).
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

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::visit_mut::VisitMut;
use syn::{
    AttrStyle, Attribute, Block, FnArg, GenericParam, Ident, Lifetime, LifetimeParam, Pat,
    ReturnType, Signature, Token, Type, Visibility,
};

use crate::args::{self, Arg, Args};

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
    if let ReturnType::Type(_, ty) = &sig.output
        && let Type::Never(never) = &**ty
    {
        return Err(syn::Error::new(
            never.bang_token.span,
            "#[preserve_context] cannot rewrite an `async fn` that returns `!`: the future's \
             `Output = !` needs the unstable never type; return `std::convert::Infallible` \
             instead",
        ));
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

    let lifetimes = name_lifetimes(&mut sig);
    let (rebinds, has_receiver) = move_arguments(&mut sig);
    if has_receiver {
        RenameSelf.visit_block_mut(&mut block);
    }
    let body = typed_body(&sig.output, &block, args);

    let mut captured: Vec<TokenStream> = lifetimes
        .mentioned
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
    let types: Vec<&Type> = sig
        .inputs
        .iter()
        .filter_map(|input| match input {
            FnArg::Typed(typed) if !contains_impl_trait(&typed.ty) => Some(&*typed.ty),
            _ => None,
        })
        .collect();
    (!types.is_empty()).then(|| {
        quote! {
            #[deny(elided_lifetimes_in_paths)]
            let _ = |#(_: #types),*| {};
        }
    })
}

/// Names the elided lifetimes of the inputs (and the output's, as elision would), declares
/// the new names, and returns what the inputs mention.
fn name_lifetimes(sig: &mut Signature) -> Lifetimes {
    let mut lifetimes = Lifetimes::default();
    for input in &mut sig.inputs {
        lifetimes.visit_fn_arg_mut(input);
    }
    for param in sig.generics.lifetimes() {
        lifetimes.mention(&param.lifetime);
    }
    if let ReturnType::Type(_, ty) = &mut sig.output {
        let elided_as = lifetimes.output_lifetime();
        if elided_as.is_some() {
            Lifetimes {
                elided_as,
                ..Lifetimes::default()
            }
            .visit_type_mut(ty);
        }
    }
    let position = sig.generics.lifetimes().count();
    for (offset, name) in lifetimes.named.iter().enumerate() {
        let param = GenericParam::Lifetime(LifetimeParam::new(name.clone()));
        sig.generics.params.insert(position + offset, param);
    }
    lifetimes
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
            FnArg::Typed(typed) => match &mut *typed.pat {
                Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => {
                    let mutability = pat.mutability.take();
                    let ident = &pat.ident;
                    rebinds.push(quote!(let #mutability #ident = #ident;));
                }
                pat => {
                    // `_` and destructuring: keep the whole argument alive until the body
                    // ends, then bind the pattern from it.
                    let arg = format_ident!("__arg{}", index, span = mixed);
                    let user_pat = std::mem::replace(pat, Pat::Verbatim(arg.to_token_stream()));
                    rebinds.push(quote!(let #arg = #arg; let #user_pat = #arg;));
                }
            },
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

/// Names elided lifetimes (`&T`, `'_`) in the inputs `'__elidedN`, and collects every
/// lifetime the inputs mention, except `'static` and those bound by a `for<…>` or hidden in
/// `Fn(…)` / `fn(…)` sugar (whose elided lifetimes are higher-ranked: naming them would
/// change the type). In the output, elided lifetimes get the name elision would give them,
/// so that the signature does not mix named and elided forms of one lifetime.
#[derive(Default)]
struct Lifetimes {
    /// What an elided lifetime becomes: a fresh name (`None`, in the inputs) or this one.
    elided_as: Option<Lifetime>,
    /// The lifetimes made up for elided ones, in order.
    named: Vec<Lifetime>,
    /// Every lifetime the inputs mention, once each, in order.
    mentioned: Vec<Lifetime>,
    /// The distinct lifetimes of the inputs, `'static` included: elision's candidates.
    candidates: Vec<Lifetime>,
    /// Within the receiver's type; then the lifetime of its `&Self`, which elision prefers.
    in_receiver: bool,
    self_lifetime: Option<Lifetime>,
    /// Lifetimes bound by enclosing `for<…>` binders.
    bound: Vec<Lifetime>,
    /// Depth of `Fn(…)` / `fn(…)` sugar around the current node.
    higher_ranked: usize,
}

impl Lifetimes {
    /// The lifetime that an elided one in the output stands for, by the elision rules: the
    /// receiver's `&Self`, else the only lifetime of the inputs.
    fn output_lifetime(&self) -> Option<Lifetime> {
        match (&self.self_lifetime, self.candidates.as_slice()) {
            (Some(lifetime), _) | (None, [lifetime]) => Some(lifetime.clone()),
            _ => None,
        }
    }

    fn elided(&mut self, span: Span) -> Option<Lifetime> {
        if self.higher_ranked > 0 {
            return None;
        }
        if let Some(lifetime) = &self.elided_as {
            return Some(lifetime.clone());
        }
        let lifetime = Lifetime::new(&format!("'__elided{}", self.named.len()), span);
        self.named.push(lifetime.clone());
        Some(lifetime)
    }

    fn mention(&mut self, lifetime: &Lifetime) {
        if lifetime.ident == "_" || self.bound.contains(lifetime) || self.elided_as.is_some() {
            return;
        }
        if !self.candidates.contains(lifetime) {
            self.candidates.push(lifetime.clone());
        }
        if lifetime.ident != "static" && !self.mentioned.contains(lifetime) {
            self.mentioned.push(lifetime.clone());
        }
    }

    fn within_binder<T>(
        &mut self,
        binder: Option<&syn::BoundLifetimes>,
        f: impl FnOnce(&mut Self) -> T,
    ) -> T {
        let before = self.bound.len();
        if let Some(binder) = binder {
            for param in &binder.lifetimes {
                if let GenericParam::Lifetime(param) = param {
                    self.bound.push(param.lifetime.clone());
                }
            }
        }
        let result = f(self);
        self.bound.truncate(before);
        result
    }
}

impl VisitMut for Lifetimes {
    fn visit_receiver_mut(&mut self, recv: &mut syn::Receiver) {
        if recv.colon_token.is_some() {
            // `self: Pin<&mut Self>`: the lifetimes are in the written type.
            self.in_receiver = true;
            self.visit_type_mut(&mut recv.ty);
            self.in_receiver = false;
        } else if let Some((and, lifetime)) = &mut recv.reference {
            if lifetime.is_none() {
                *lifetime = self.elided(and.span);
            }
            if let Some(lifetime) = lifetime.clone() {
                self.mention(&lifetime);
                self.self_lifetime = Some(lifetime.clone());
                // Keep the synthesized `&Self` in step with the short form.
                if let Type::Reference(reference) = &mut *recv.ty {
                    reference.lifetime = Some(lifetime);
                }
            }
        }
    }

    fn visit_type_reference_mut(&mut self, reference: &mut syn::TypeReference) {
        if reference.lifetime.is_none() {
            reference.lifetime = self.elided(reference.and_token.span);
        }
        if let Some(lifetime) = &mut reference.lifetime {
            self.visit_lifetime_mut(lifetime);
            let is_self = matches!(&*reference.elem, Type::Path(p) if p.qself.is_none() && p.path.is_ident("Self"));
            if self.in_receiver && is_self && self.self_lifetime.is_none() {
                self.self_lifetime = reference.lifetime.clone();
            }
        }
        self.visit_type_mut(&mut reference.elem);
    }

    fn visit_lifetime_mut(&mut self, lifetime: &mut Lifetime) {
        if lifetime.ident == "_"
            && let Some(named) = self.elided(lifetime.apostrophe)
        {
            *lifetime = named;
        }
        self.mention(lifetime);
    }

    fn visit_type_bare_fn_mut(&mut self, bare: &mut syn::TypeBareFn) {
        let binder = bare.lifetimes.clone();
        self.within_binder(binder.as_ref(), |this| {
            this.higher_ranked += 1;
            syn::visit_mut::visit_type_bare_fn_mut(this, bare);
            this.higher_ranked -= 1;
        });
    }

    fn visit_parenthesized_generic_arguments_mut(
        &mut self,
        args: &mut syn::ParenthesizedGenericArguments,
    ) {
        self.higher_ranked += 1;
        syn::visit_mut::visit_parenthesized_generic_arguments_mut(self, args);
        self.higher_ranked -= 1;
    }

    fn visit_trait_bound_mut(&mut self, bound: &mut syn::TraitBound) {
        let binder = bound.lifetimes.clone();
        self.within_binder(binder.as_ref(), |this| {
            syn::visit_mut::visit_trait_bound_mut(this, bound);
        });
    }

    fn visit_type_trait_object_mut(&mut self, object: &mut syn::TypeTraitObject) {
        // `dyn Trait` without a lifetime takes its default from the context (`'static` in a
        // `Box`, the reference's in `&dyn`): visit only what is written.
        syn::visit_mut::visit_type_trait_object_mut(self, object);
    }

    fn visit_pat_mut(&mut self, _: &mut Pat) {
        // Patterns hold no lifetimes; their types are visited through `PatType::ty`.
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

/// Renames the receiver `self` to the hidden `__self` in a method's body, so that the
/// block can move it in like any other argument. Nested items (a `fn`, an `impl`) have a
/// `self` of their own and are left alone; macro arguments are renamed token by token,
/// except `self::path`.
struct RenameSelf;

impl RenameSelf {
    fn ident(original: &Ident) -> Ident {
        Ident::new("__self", original.span().resolved_at(Span::mixed_site()))
    }

    fn tokens(tokens: TokenStream) -> TokenStream {
        let mut out = Vec::new();
        let mut iter = tokens.into_iter().peekable();
        while let Some(tree) = iter.next() {
            out.push(match tree {
                TokenTree::Ident(ident) if ident == "self" => {
                    let path =
                        matches!(iter.peek(), Some(TokenTree::Punct(p)) if p.as_char() == ':');
                    if path {
                        TokenTree::Ident(ident)
                    } else {
                        TokenTree::Ident(Self::ident(&ident))
                    }
                }
                TokenTree::Group(group) => {
                    let mut renamed = Group::new(group.delimiter(), Self::tokens(group.stream()));
                    renamed.set_span(group.span());
                    TokenTree::Group(renamed)
                }
                other => other,
            });
        }
        out.into_iter().collect()
    }
}

impl VisitMut for RenameSelf {
    fn visit_expr_path_mut(&mut self, expr: &mut syn::ExprPath) {
        if expr.qself.is_none()
            && expr.path.leading_colon.is_none()
            && expr.path.segments.len() == 1
        {
            let segment = &mut expr.path.segments[0];
            if segment.ident == "self" && segment.arguments.is_none() {
                segment.ident = Self::ident(&segment.ident);
                return;
            }
        }
        syn::visit_mut::visit_expr_path_mut(self, expr);
    }

    fn visit_item_mut(&mut self, _: &mut syn::Item) {}

    fn visit_macro_mut(&mut self, mac: &mut syn::Macro) {
        mac.tokens = Self::tokens(std::mem::take(&mut mac.tokens));
    }
}
