//! `#[context_var]`: a `static` becomes a context variable with a type of its own.
//!
//! ```text
//! // Input:
//! #[context_var(name = "tenant.id")]
//! pub static TENANT: u64 = 7;
//!
//! // Output:
//! pub static TENANT: ::contextvars::__private::ContextVar<TENANT> =
//!     ::contextvars::__private::ContextVar::with_default("tenant.id", || -> u64 { 7 });
//! #[doc(hidden)]
//! #[allow(non_camel_case_types)]
//! pub struct TENANT {}
//! impl ::contextvars::__private::Key for TENANT
//! where
//!     for<'v> <fn(&'static ()) -> u64 as ::contextvars::__private::Returns>::Output:
//!         ::contextvars::__private::SendSyncStatic<'v>,
//! {
//!     type Value = <fn(&'static ()) -> u64 as ::contextvars::__private::Returns>::Output;
//!     type Default = ::contextvars::__private::WithDefault;
//!     const LOG: bool = false;
//!     fn path() -> &'static str { concat!(module_path!(), "::TENANT") }
//!     fn fmt_value(..) { /* the value's Debug, or its type name */ }
//!     fn copy_proof() -> Option<CopyProof<Self::Value>> { /* `Some` where the type is `Copy` */ }
//!     fn quiet_drop_proof() -> Option<QuietDropProof<Self::Value>> { /* `Some` for `String`, … */ }
//! }
//! ```
//!
//! With `log`, `const LOG: bool = true;` and, before the rest,
//! `::contextvars::__private::log_feature!();`: nothing with the runtime's `tracing` feature,
//! one error on `log` without it.
//!
//! The struct lives in the type namespace and the static in the value namespace, so both
//! carry the user's name: `Token<TENANT>` is the token of `TENANT` and of nothing else.
//!
//! Two rewrites of the user's type, both only where the meaning stays the same:
//!
//! - Elided lifetimes mean `'static`, as in any `static`. `&str` and `&'_ str` are written
//!   `&'static str`. A path's hidden lifetime (`Cow<str>`) cannot be seen without type
//!   information, so the value type is read as the return type of `fn(&'static ()) -> Type`:
//!   by the elision rules, every elided lifetime there is the one input lifetime, `'static`,
//!   while `fn(&str) -> &str` pointers and `Fn(&str) -> &str` bounds inside it keep their
//!   own (a `type Value = Cow<str>;` would not compile).
//! - A type that is not `Send + Sync + 'static` is reported once, on the type: the `Key`
//!   impl holds only where the type is, so neither the impl's own bounds nor the static's
//!   `Sync` check report it a second time. The bound is higher-ranked (`for<'v>`) because
//!   rustc rejects a where-clause without generics that does not hold (a trivial bound)
//!   instead of leaving the impl unusable; `SendSyncStatic` carries the message.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{Attribute, Expr, Ident, Lifetime, LitStr, Token, Type, Visibility};

use crate::args::{self, Arg, Args};

/// `static NAME: Type;` or `static NAME: Type = default;`, with attributes and visibility.
/// Parsed by hand because Rust has no `static` without an initializer.
struct StaticItem {
    attrs: Vec<Attribute>,
    vis: Visibility,
    mutability: Option<Token![mut]>,
    ident: Ident,
    ty: Type,
    default: Option<Expr>,
}

impl Parse for StaticItem {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        if !input.peek(Token![static]) {
            return Err(not_a_static(input));
        }
        input.parse::<Token![static]>()?;
        let mutability = input.parse()?;
        let ident = input.parse()?;
        input.parse::<Token![:]>()?;
        let ty = input.parse()?;
        let default = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Some(input.parse()?)
        } else {
            None
        };
        input.parse::<Token![;]>()?;
        Ok(StaticItem {
            attrs,
            vis,
            mutability,
            ident,
            ty,
            default,
        })
    }
}

/// Whether `item` is a `static` without its `: Type`.
fn lacks_type(item: &TokenStream) -> bool {
    use proc_macro2::TokenTree;
    let mut trees = item
        .clone()
        .into_iter()
        .skip_while(|tree| !matches!(tree, TokenTree::Ident(i) if i == "static"));
    if trees.next().is_none() {
        return false;
    }
    let mut next = trees.next();
    if matches!(&next, Some(TokenTree::Ident(i)) if i == "mut") {
        next = trees.next();
    }
    matches!(next, Some(TokenTree::Ident(_)))
        && !matches!(trees.next(), Some(TokenTree::Punct(p)) if p.as_char() == ':')
}

/// The error for an item that is not a `static`, on the keyword that says what it is.
fn not_a_static(input: ParseStream<'_>) -> syn::Error {
    let found = input
        .fork()
        .parse::<proc_macro2::TokenTree>()
        .map(|t| t.to_string());
    let what = match found.as_deref() {
        Ok(
            kw @ ("const" | "fn" | "struct" | "enum" | "union" | "type" | "trait" | "impl" | "mod"
            | "use" | "async" | "unsafe" | "extern" | "let"),
        ) => format!("a `{kw}` item"),
        _ => "this item".to_string(),
    };
    input.error(format!(
        "#[context_var] goes on a `static`, not on {what}: write `static NAME: Type;` \
         (no default) or `static NAME: Type = default;`"
    ))
}

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item_parsed = match syn::parse2::<StaticItem>(item.clone()) {
        Ok(parsed) => parsed,
        // Not a static: say so once, and leave the item as it was. A malformed `static`
        // is left out: the compiler would report the same mistake in it again.
        Err(err) => {
            // `static NAME = …;` without a type: the compiler already reports it, with the
            // fix, while parsing the item; a second error would only repeat it.
            if lacks_type(&item) {
                return item;
            }
            let mut output = err.to_compile_error();
            output.extend(item);
            return output;
        }
    };
    let mut errors = Vec::new();
    let accepted = [Arg::Name, Arg::Crate, Arg::Log, Arg::Baggage];
    let args = args::parse(attr, "context_var", &accepted).unwrap_or_else(|err| {
        errors.push(err);
        Args::default()
    });
    if let Some(mutability) = item_parsed.mutability {
        errors.push(syn::Error::new(
            mutability.span(),
            "a context variable cannot be `static mut`: remove `mut`; its value changes \
             with `set`, per context",
        ));
    }
    // After an error, still emit the variable, so that one mistake gives one error.
    let errors = errors.into_iter().map(|e| e.to_compile_error());
    let var = generate(&item_parsed, &args);
    quote!(#(#errors)* #var)
}

fn generate(item: &StaticItem, args: &Args) -> TokenStream {
    let StaticItem {
        attrs,
        vis,
        ident,
        ty,
        default,
        ..
    } = item;
    let ty = &with_static_lifetimes(ty.clone());
    let private = args.private();
    let name = match &args.name {
        Some(name) => name.clone(),
        None => LitStr::new(&syn::ext::IdentExt::unraw(ident).to_string(), ident.span()),
    };
    let log = args.log.is_some();
    // Where the variable is declared, to tell apart on a log line variables that share a name.
    let path = LitStr::new(
        &format!("::{}", syn::ext::IdentExt::unraw(ident)),
        ident.span(),
    );
    let (kind, constructor) = match default {
        None => (quote!(NoDefault), quote!(new(#name))),
        Some(expr) => {
            let init = quote_spanned!(expr.span()=> || -> #ty { #expr });
            (quote!(WithDefault), quote!(with_default(#name, #init)))
        }
    };
    // The static's type spans the user's type, from its first token to its last, so that
    // the one error about a value that is not `Send + Sync + 'static` underlines that type.
    let (first, last) = first_and_last_span(ty);
    let private_at_ty = args.private_at(first);
    let close = quote_spanned!(last=> >);
    let static_ty = quote_spanned!(first=> #private_at_ty::ContextVar<#ident #close);
    let value = quote!(<fn(&'static ()) -> #ty as #private::Returns>::Output);
    let baggage = baggage_claim(item, args, ty);
    // `#[cfg]` on the static goes on the type and the impl too: all three or none exist.
    let cfgs: Vec<_> = attrs
        .iter()
        .filter(|attr| attr.path().is_ident("cfg"))
        .collect();
    // With `log`: nothing, through a macro of the runtime that is one clear error, on `log`,
    // without its `tracing` feature (nothing would write the variable on a log line).
    let log_feature = args.log.map(|span| {
        let feature = args.private_at(span);
        quote_spanned!(span=> #(#cfgs)* #feature::log_feature!();)
    });
    quote! {
        #log_feature

        #(#cfgs)*
        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        #vis struct #ident {}

        #(#cfgs)*
        // Rust 1.85 to 1.88 warn that a hidden lifetime in `fn(&'static ()) -> Cow<str>`
        // resolves to `'static`: that is the point.
        #[allow(unknown_lints, elided_named_lifetimes)]
        impl #private::Key for #ident
        where
            for<'__v> #value: #private::SendSyncStatic<'__v>,
        {
            type Value = #value;
            type Default = #private::#kind;
            const LOG: bool = #log;

            fn path() -> &'static str {
                ::core::concat!(::core::module_path!(), #path)
            }

            fn fmt_value(
                value: &Self::Value,
                f: &mut ::core::fmt::Formatter<'_>,
            ) -> ::core::fmt::Result {
                #[allow(unused_imports)]
                use #private::{ViaDebug as _, ViaTypeName as _};
                (&&#private::DebugProbe(value)).fmt_probe(f)
            }

            #[inline]
            fn copy_proof() -> ::core::option::Option<#private::CopyProof<Self::Value>> {
                #[allow(unused_imports)]
                use #private::{ViaCopy as _, ViaMove as _};
                (&&#private::CopyProbe::<Self::Value>(::core::marker::PhantomData)).copy_proof()
            }

            #[inline]
            fn quiet_drop_proof() -> ::core::option::Option<#private::QuietDropProof<Self::Value>> {
                #[allow(unused_imports)]
                use #private::{ViaLoud as _, ViaQuiet as _};
                (&&#private::QuietProbe::<Self::Value>(::core::marker::PhantomData))
                    .quiet_drop_proof()
            }
        }

        #(#attrs)*
        #vis static #ident: #static_ty = #private::ContextVar::#constructor;

        #baggage
    }
}

/// With `baggage = "key"`: the key's impl and the variable's claim on it, through a macro of
/// the runtime that is one clear error without its `baggage` feature.
///
/// ```text
/// // Input:
/// #[context_var(baggage = "tenant")]
/// static TENANT: String;
///
/// // Output (besides the variable):
/// ::contextvars::__private::baggage_feature!(); // an error without the feature
/// const _: () = ::contextvars::__private::assert_baggage_value::<String>(); // on the type
/// ::contextvars::__private::claim_baggage! { TENANT; "tenant" }
/// // which, with the feature, expands to:
/// impl BaggageKey for TENANT { const KEY: &str = "tenant"; /* Display, FromStr */ }
/// inventory::submit! { Claim::new(&TENANT) }
/// ```
fn baggage_claim(item: &StaticItem, args: &Args, ty: &Type) -> TokenStream {
    let Some(key) = &args.baggage else {
        return TokenStream::new();
    };
    let ident = &item.ident;
    let cfgs: Vec<_> = item
        .attrs
        .iter()
        .filter(|attr| attr.path().is_ident("cfg"))
        .collect();
    // Each piece spans the tokens its error is about: the missing feature's, the key; the
    // check of the value type (`Display + FromStr`), the type.
    let feature = args.private_at(key.span());
    let (first, _) = first_and_last_span(ty);
    let check = args.private_at(first);
    let private = args.private();
    quote! {
        #(#cfgs)*
        #feature::baggage_feature!();
        #(#cfgs)*
        const _: () = #check::assert_baggage_value::<#ty>();
        #(#cfgs)*
        #private::claim_baggage! { #ident; #key }
    }
}

/// The spans of the first and the last token of `ty`.
fn first_and_last_span(ty: &Type) -> (Span, Span) {
    let mut tokens = ty.to_token_stream().into_iter();
    let first = tokens.next().map_or_else(Span::call_site, |t| t.span());
    let last = tokens.last().map_or(first, |t| t.span());
    (first, last)
}

/// `ty` with its elided reference lifetimes written `'static`, which is what they mean in a
/// `static` (hidden ones in paths are left to `fn(&'static ()) -> ty`).
///
/// ```text
/// // Input:                       // Output:
/// &str                            &'static str
/// Option<&'_ [u8]>                Option<&'static [u8]>
/// Box<dyn Fn(&str) -> &str>       Box<dyn Fn(&str) -> &str>     (the closure's own)
/// ```
fn with_static_lifetimes(mut ty: Type) -> Type {
    StaticLifetimes.visit_type_mut(&mut ty);
    ty
}

struct StaticLifetimes;

impl VisitMut for StaticLifetimes {
    fn visit_type_reference_mut(&mut self, reference: &mut syn::TypeReference) {
        if reference.lifetime.is_none() {
            reference.lifetime = Some(Lifetime::new("'static", reference.and_token.span));
        }
        syn::visit_mut::visit_type_reference_mut(self, reference);
    }

    fn visit_lifetime_mut(&mut self, lifetime: &mut Lifetime) {
        if lifetime.ident == "_" {
            *lifetime = Lifetime::new("'static", lifetime.apostrophe);
        }
    }

    // In `fn(&str) -> &str` and `Fn(&str) -> &str`, elision binds to the function's own
    // arguments: `'static` there would change the type.
    fn visit_type_bare_fn_mut(&mut self, _: &mut syn::TypeBareFn) {}

    fn visit_parenthesized_generic_arguments_mut(
        &mut self,
        _: &mut syn::ParenthesizedGenericArguments,
    ) {
    }
}
