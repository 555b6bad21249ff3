//! Lifetimes for edition 2021: an `impl Trait` there may hold only the lifetimes its bounds
//! name, so every lifetime of the arguments gets a name (elided ones too) for the
//! `Captures<…>` bound to list.

use proc_macro2::Span;
use syn::visit_mut::VisitMut;
use syn::{GenericParam, Lifetime, LifetimeParam, Pat, ReturnType, Signature, Type};

/// Names the elided lifetimes of the inputs (and the output's, as elision would), declares
/// the new names, and returns every lifetime the inputs mention but `'static`.
pub(super) fn name_lifetimes(sig: &mut Signature) -> Vec<Lifetime> {
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
    lifetimes.mentioned
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
        if lifetime.ident == "_" {
            if let Some(named) = self.elided(lifetime.apostrophe) {
                *lifetime = named;
            }
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

#[cfg(test)]
mod tests {
    use proc_macro2::TokenStream;
    use quote::ToTokens;

    use super::name_lifetimes;

    /// The signature after naming, and the lifetimes it reports.
    fn named(sig: &str) -> (String, Vec<String>) {
        let mut sig: syn::Signature = syn::parse_str(sig).unwrap();
        let mentioned = name_lifetimes(&mut sig);
        let mentioned = mentioned.iter().map(ToString::to_string).collect();
        (
            without_spaces(&sig.to_token_stream().to_string()),
            mentioned,
        )
    }

    /// `text` as tokens, compared without the spaces their printing puts in.
    fn tokens(text: &str) -> String {
        without_spaces(&text.parse::<TokenStream>().unwrap().to_string())
    }

    fn without_spaces(text: &str) -> String {
        text.chars().filter(|c| !c.is_whitespace()).collect()
    }

    #[test]
    fn elided_lifetimes_get_names_and_the_output_takes_the_receivers() {
        let (sig, mentioned) = named("fn f(&self, a: &str, b: Iter<'_, u8>) -> &str");
        let expected = "fn f<'__elided0, '__elided1, '__elided2>(&'__elided0 self, \
                        a: &'__elided1 str, b: Iter<'__elided2, u8>) -> &'__elided0 str";
        assert_eq!(sig, tokens(expected));
        assert_eq!(mentioned, ["'__elided0", "'__elided1", "'__elided2"]);
    }

    #[test]
    fn a_typed_receivers_reference_to_self_takes_the_output() {
        let (sig, _) = named("fn f(self: Pin<&mut Self>, a: &u8) -> &u8");
        let expected = "fn f<'__elided0, '__elided1>(self: Pin<&'__elided0 mut Self>, \
                        a: &'__elided1 u8) -> &'__elided0 u8";
        assert_eq!(sig, tokens(expected));
    }

    #[test]
    fn the_only_input_lifetime_names_the_outputs_elided_ones() {
        let (sig, _) = named("fn f(x: &u8) -> impl Iterator<Item = &u8> + '_");
        let expected = "fn f<'__elided0>(x: &'__elided0 u8) \
                        -> impl Iterator<Item = &'__elided0 u8> + '__elided0";
        assert_eq!(sig, tokens(expected));
    }

    #[test]
    fn an_ambiguous_output_is_left_to_the_compiler() {
        let (sig, _) = named("fn f(x: &u8, y: &u8) -> &u8");
        let expected = "fn f<'__elided0, '__elided1>(x: &'__elided0 u8, y: &'__elided1 u8) -> &u8";
        assert_eq!(sig, tokens(expected));
    }

    #[test]
    fn higher_ranked_and_static_lifetimes_are_left_alone() {
        let sig =
            "fn f(k: impl Fn(&u8) -> &u8, p: fn(&u8), q: impl for<'x> Tr<'x>, r: &'static str)";
        let (named_sig, mentioned) = named(sig);
        assert_eq!(named_sig, tokens(sig));
        assert!(mentioned.is_empty(), "{mentioned:?}");
    }

    #[test]
    fn named_lifetimes_are_mentioned_once_each() {
        let sig = "fn f<'a, 'b: 'a, 'c>(x: &'a str, y: Foo<'b, 'a>) -> Foo<'a, 'c>";
        let (named_sig, mentioned) = named(sig);
        assert_eq!(named_sig, tokens(sig));
        assert_eq!(mentioned, ["'a", "'b", "'c"]);
    }
}
