//! What the macros' expansions use. Not public API: no stability promise.

pub use context_core::{Context, ContextVar, FutureExt, Key, NoDefault, WithContext, WithDefault};

/// Formats a value with `Debug` where its type has it, else as the type's name, chosen at
/// the macro's call site, where the type is concrete (auto-ref specialization).
pub struct DebugProbe<'a, T: ?Sized>(pub &'a T);

/// Picked when `T: Debug`: one more `&` than [`ViaTypeName`] needs, so it is tried first.
pub trait ViaDebug {
    /// Writes the value.
    ///
    /// # Errors
    /// Those of the formatter.
    fn fmt_probe(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result;
}

impl<T: ?Sized + ::core::fmt::Debug> ViaDebug for &DebugProbe<'_, T> {
    fn fmt_probe(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
        ::core::fmt::Debug::fmt(self.0, f)
    }
}

/// The fallback for types without `Debug`.
pub trait ViaTypeName {
    /// Writes the type's name.
    ///
    /// # Errors
    /// Those of the formatter.
    fn fmt_probe(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result;
}

impl<T: ?Sized> ViaTypeName for DebugProbe<'_, T> {
    fn fmt_probe(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
        f.write_str(::core::any::type_name::<T>())
    }
}
