//! A tower layer that runs every request in a context of its own (feature `tower`).
//!
//! A server (axum, tonic, hyper) serves each connection in a task spawned with plain
//! `tokio::spawn`, which has no context. [`ContextLayer`] gives each request one: a fresh copy
//! of a base context captured when the layer is built, entered for the service's `call`, every
//! poll of the response future and its drop, with an optional hook that sets variables from
//! the request ([`ContextLayer::on_request`], [`ContextLayer::on_request_async`]) and an option
//! to poll streaming bodies in it too ([`ContextLayer::body_in_context`]). A layer called
//! inside another layer's request, through any executor the request's context went to, builds
//! on that request's context instead of its base; the request's context carries a binding of
//! its own that marks it so. [`AcrossWorkerLayer`] (or
//! [`CarryContextLayer`] and [`ReenterContextLayer`]) carries each request's context past a
//! shared worker such as `tower::buffer::Buffer`.
//!
//! The `contextvars` crate's documentation of this module tells the whole story with its
//! macros (the layer goes outermost, axum, tonic and hyper, nested layers, shared workers);
//! the items here are the runtime part.

// One file per part of the layer; a file imports only files listed after it (links in the
// docs aside).
// - `layer.rs`: `ContextLayer`, the builder a user writes (`new`, `with_base`, `on_request`, …).
// - `worker.rs`: carrying a request's context past a shared worker (`tower::buffer::Buffer`).
// - `service.rs`: the service the layer makes; a request's `call`, every poll and the drop of
//   its future run in the request's context.
// - `nested.rs`: where a request's context starts; a layer called inside another layer's
//   request builds on that request (the binding `contextvars.tower.request` marks it).
// - `hooks.rs`: the request hooks, `on_request` and `on_request_async`.
// - `body.rs`: what happens to the response; a streaming body polled in the request's context.
// The server side of baggage (`ContextLayer::accept_baggage`) lives with the rest of the
// baggage support, in `integrations/baggage/server.rs`.

mod body;
mod hooks;
mod layer;
mod nested;
mod service;
mod worker;

pub use body::{BodyInContext, ContextBody, KeepResponse, WrapResponse};
pub use hooks::{AsyncHook, AsyncHookService, HookThenCall, NoHook, OnRequest, OnRequestAsync};
pub use layer::ContextLayer;
pub use service::{ContextService, ResponseFuture};
pub use worker::{
    AcrossWorkerLayer, CarriesContext, CarryContext, CarryContextLayer, ReenterContext,
    ReenterContextLayer, ReenterFuture,
};

// Feature `baggage`: the client layer, and the types `ContextLayer::accept_baggage` makes
// (defined with the rest of the baggage support, in `crate::baggage`).
#[cfg(feature = "baggage")]
#[cfg_attr(docsrs, doc(cfg(feature = "baggage")))]
pub use crate::baggage::{AcceptBaggage, AcceptBaggageLayer, BaggageLayer, BaggageService};
