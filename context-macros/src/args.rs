//! The arguments both attributes take, parsed once: `name = "…"`, `crate = path`, `log`,
//! `baggage = "…"`.
//! Each attribute says which it accepts; anything else, or anything twice, is an error on
//! the offending tokens that lists what is accepted.

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::quote;
use syn::meta::ParseNestedMeta;
use syn::{LitStr, Path};

/// An argument an attribute may accept.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arg {
    Name,
    Crate,
    Log,
    Baggage,
}

impl Arg {
    const ALL: [Arg; 4] = [Arg::Name, Arg::Crate, Arg::Log, Arg::Baggage];

    fn keyword(self) -> &'static str {
        match self {
            Arg::Name => "name",
            Arg::Crate => "crate",
            Arg::Log => "log",
            Arg::Baggage => "baggage",
        }
    }

    fn usage(self) -> &'static str {
        match self {
            Arg::Name => "`name = \"...\"`",
            Arg::Crate => "`crate = path`",
            Arg::Log => "`log`",
            Arg::Baggage => "`baggage = \"key\"`",
        }
    }
}

/// The parsed arguments.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) name: Option<LitStr>,
    krate: Option<Path>,
    /// `log`, with its span: the error without the runtime's `tracing` feature goes there.
    pub(crate) log: Option<Span>,
    /// The baggage key, checked to be a token.
    pub(crate) baggage: Option<LitStr>,
}

impl Args {
    /// The path generated code uses to reach the runtime: `<crate>::__private`.
    pub(crate) fn private(&self) -> TokenStream {
        if let Some(path) = &self.krate {
            quote!(#path::__private)
        } else {
            quote!(::contextvars::__private)
        }
    }
}

impl Args {
    /// [`private`](Self::private) with every token spanned at `span`, so that an error
    /// about the generated code it starts lands on `span` (the user's tokens).
    pub(crate) fn private_at(&self, span: Span) -> TokenStream {
        respan(self.private(), span)
    }
}

/// `tokens` with every span set to `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            if let TokenTree::Group(group) = &tree {
                let mut inner = Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                tree = TokenTree::Group(inner);
            } else {
                tree.set_span(span);
            }
            tree
        })
        .collect()
}

/// Parses `tokens` as the arguments of `#[attr(...)]`, accepting only `accepted`.
pub(crate) fn parse(tokens: TokenStream, attr: &str, accepted: &[Arg]) -> syn::Result<Args> {
    let mut args = Args::default();
    let mut seen = Vec::new();
    let parser = syn::meta::parser(|meta| {
        let Some(arg) = Arg::ALL
            .into_iter()
            .find(|a| meta.path.is_ident(a.keyword()))
        else {
            return Err(unknown(&meta, attr, accepted));
        };
        if !accepted.contains(&arg) {
            return Err(unknown(&meta, attr, accepted));
        }
        if seen.contains(&arg) {
            return Err(meta.error(format!("`{}` is given twice; give it once", arg.keyword())));
        }
        seen.push(arg);
        match arg {
            Arg::Name => {
                let name: LitStr = meta.value()?.parse()?;
                if name.value().is_empty() {
                    return Err(syn::Error::new(name.span(), "the name must not be empty"));
                }
                args.name = Some(name);
            }
            Arg::Crate => {
                let value = meta.value()?;
                // `crate = path`, or the string form serde and tokio accept.
                let path = if value.peek(LitStr) {
                    value.parse::<LitStr>()?.parse::<Path>()?
                } else {
                    Path::parse_mod_style(value)?
                };
                args.krate = Some(path);
            }
            Arg::Log => {
                if !meta.input.is_empty() && !meta.input.peek(syn::Token![,]) {
                    return Err(meta.error("`log` takes no value: write `#[context_var(log)]`"));
                }
                args.log = Some(syn::spanned::Spanned::span(&meta.path));
            }
            Arg::Baggage => {
                let key: LitStr = meta.value()?.parse()?;
                check_baggage_key(&key)?;
                args.baggage = Some(key);
            }
        }
        Ok(())
    });
    syn::parse::Parser::parse2(parser, tokens)?;
    Ok(args)
}

/// A baggage key is an HTTP token (W3C Baggage): letters, digits and ``!#$%&'*+-.^_`|~``.
fn check_baggage_key(key: &LitStr) -> syn::Result<()> {
    let text = key.value();
    if text.is_empty() {
        return Err(syn::Error::new(
            key.span(),
            "the baggage key must not be empty",
        ));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(*c)))
    {
        return Err(syn::Error::new(
            key.span(),
            format!(
                "{bad:?} cannot appear in a baggage key: a key is a token of letters, digits \
                 and ! # $ % & ' * + - . ^ _ ` | ~ (W3C Baggage)"
            ),
        ));
    }
    Ok(())
}

fn unknown(meta: &ParseNestedMeta<'_>, attr: &str, accepted: &[Arg]) -> syn::Error {
    let path = &meta.path;
    let found = quote!(#path).to_string().replace(' ', "");
    let list = match accepted {
        [] => "no arguments".to_string(),
        [only] => only.usage().to_string(),
        [init @ .., last] => format!(
            "{} and {}",
            init.iter()
                .map(|a| a.usage())
                .collect::<Vec<_>>()
                .join(", "),
            last.usage()
        ),
    };
    meta.error(format!(
        "unknown argument `{found}`; #[{attr}] accepts {list}"
    ))
}
