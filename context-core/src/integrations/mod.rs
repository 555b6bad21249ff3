//! Integrations with the crates services already use, each behind its feature: a tower
//! layer (`tower`) and tracing-subscriber formatters (`tracing`). Built on the layers below.

#[cfg(feature = "tower")]
pub mod tower;
#[cfg(feature = "tracing")]
pub mod tracing;
