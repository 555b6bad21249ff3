//! Integrations with the crates services already use, each behind its feature: a tower
//! layer (`tower`), tracing-subscriber formatters (`tracing`), and W3C Baggage across
//! processes (`baggage`, on top of `tower`). Built on the layers below.

#[cfg(feature = "baggage")]
pub mod baggage;
#[cfg(feature = "opentelemetry")]
pub mod opentelemetry;
#[cfg(feature = "tracing")]
mod spans;
#[cfg(feature = "tower")]
pub mod tower;
#[cfg(feature = "tracing")]
pub mod tracing;
