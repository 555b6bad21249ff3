//! The receiver in the body: `self` becomes the hidden `__self`, so that the future can
//! move it in, and drop it when the body ends, like any other argument.

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use syn::visit_mut::VisitMut;
use syn::{Block, Ident};

/// Renames `self` to `__self` in a method's body.
pub(super) fn rename_self(block: &mut Block) {
    RenameSelf.visit_block_mut(block);
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

#[cfg(test)]
mod tests {
    use quote::ToTokens;

    #[test]
    fn renames_the_receiver_but_not_module_paths_nor_nested_items() {
        let mut block: syn::Block = syn::parse_quote!({
            let read = || self.value;
            let shown = format!("{}", self.name);
            impl Other {
                fn own(&self) -> u8 {
                    self.0
                }
            }
            self::helper(self, read(), shown)
        });
        super::rename_self(&mut block);
        let text = block.into_token_stream().to_string();
        assert_eq!(text.matches("__self").count(), 3, "{text}");
        assert!(text.contains("self :: helper"), "{text}");
        assert!(
            text.contains("fn own (& self) -> u8 { self . 0 }"),
            "{text}"
        );
    }
}
