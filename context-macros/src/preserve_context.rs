//! `#[preserve_context]`: not written yet.

use proc_macro2::TokenStream;
use quote::quote;

pub(crate) fn expand(_attr: TokenStream, item: TokenStream) -> TokenStream {
    quote!(::core::compile_error!("#[preserve_context] is not implemented yet"); #item)
}
