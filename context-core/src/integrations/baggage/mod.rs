//! Context variables and metadata across processes, in the W3C `baggage` header (feature
//! `baggage`).
//!
//! A variable declared with `#[context_var(baggage = "tenant")]` travels with outgoing HTTP
//! requests as the baggage entry `tenant=<its Display>` and arrives typed on the other side,
//! parsed with `FromStr`. Entries of the [metadata map](crate::metadata) set with
//! [`MetadataFlags::BAGGAGE`](crate::metadata::MetadataFlags::BAGGAGE) travel too, as
//! strings, and so do the entries a server received that no variable of its own claims.
//!
//! - **Server**: [`ContextLayer::accept_baggage`](crate::tower::ContextLayer::accept_baggage)
//!   reads each request's `baggage` header into the request's context.
//! - **Client**: [`BaggageLayer`] (any tower HTTP client service) and [`inject`] (any
//!   `http::HeaderMap`) write the current context's baggage into outgoing requests.
//!
//! The `contextvars` crate's documentation of this module tells the whole story with its
//! macros; the items here are the runtime part.

mod client;
mod error;
mod header;
mod registry;
mod server;

use std::collections::HashSet;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::context::Context;
use crate::current;
use crate::metadata::{self, Entry, METADATA, MetadataFlags};

pub use client::{BaggageLayer, BaggageService};
pub use error::BaggageError;
pub use header::{MAX_BYTES, MAX_ENTRIES, is_baggage_key};
pub use registry::claimed_keys;
#[doc(hidden)]
pub use registry::{BaggageKey, Claim, Claims, Staged, TextProbe, ViaNothing, ViaText};
pub use server::{AcceptBaggage, AcceptBaggageLayer, AcceptFuture, JsonBadRequest, Reject};

#[doc(hidden)]
pub use inventory;

/// The header's name, `baggage`.
pub const BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// Writes the current context's baggage into `headers`: every variable declared with
/// `#[context_var(baggage = "…")]` that is set here, then every [metadata map](crate::metadata)
/// entry set with [`MetadataFlags::BAGGAGE`] (which includes the entries a server received and
/// no variable claimed). For clients that are not tower services; [`BaggageLayer`] does this
/// for those that are.
///
/// Entries already in `headers` are kept and win: a key they hold is not written again (they
/// were put on this request on purpose). The result stays within the W3C limits
/// ([`MAX_ENTRIES`] entries, [`MAX_BYTES`] bytes): an entry that would pass them is left
/// out, and the number left out is returned. Where nothing is to be added, `headers` is
/// left as it was.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::baggage::inject;
/// use contextvars::metadata::{MetadataFlags, set_metadata, set_metadata_with};
///
/// set_metadata_with("region", "eu west", MetadataFlags::BAGGAGE);
/// set_metadata("secret", "not sent"); // not opted into baggage
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("baggage", "trace-flag=1".parse().unwrap());
/// assert_eq!(inject(&mut headers), 0);
/// assert_eq!(headers["baggage"], "trace-flag=1,region=eu%20west");
/// ```
#[allow(
    clippy::missing_panics_doc,
    reason = "the header is built from visible ASCII only"
)]
pub fn inject(headers: &mut HeaderMap) -> usize {
    inject_from(&Context::current(), headers)
}

/// [`inject`] from `context` instead of the current one.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::Context;
/// use contextvars::baggage::inject_from;
/// use contextvars::metadata::{MetadataFlags, set_metadata_with};
///
/// let context = Context::new().wrap(|| {
///     set_metadata_with("region", "eu", MetadataFlags::BAGGAGE);
///     Context::current()
/// })();
/// let mut headers = http::HeaderMap::new();
/// inject_from(&context, &mut headers);
/// assert_eq!(headers["baggage"], "region=eu");
/// ```
pub fn inject_from(context: &Context, headers: &mut HeaderMap) -> usize {
    let existing: Vec<&str> = headers
        .get_all(BAGGAGE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|member| member.trim_matches([' ', '\t']))
        .filter(|member| !member.is_empty())
        .collect();
    // Keys already in the header win. Those added below are distinct already: claimed keys
    // are, and metadata keys are, and a metadata entry under a claimed key is skipped.
    let keys: HashSet<&str> = existing.iter().map(|m| header::member_key(m)).collect();
    let mut out = existing.join(",");
    let mut count = existing.len();
    let (mut added, mut left_out) = (0, 0);
    let mut member = String::new();
    let mut add = |key: &str, value: &str, properties: Option<&str>| {
        if keys.contains(key) {
            return;
        }
        member.clear();
        header::write_member(&mut member, key, value, properties);
        let comma = usize::from(!out.is_empty());
        if count + 1 > MAX_ENTRIES || out.len() + comma + member.len() > MAX_BYTES {
            left_out += 1;
            return;
        }
        if comma == 1 {
            out.push(',');
        }
        out.push_str(&member);
        count += 1;
        added += 1;
    };
    let mut claimed = Vec::new();
    for claim in &registry::registry().all {
        if let Some(value) = claim.value_in(context) {
            add(claim.key(), &value, None);
            claimed.push(claim.key());
        }
    }
    if let Some(map) = context.get(&METADATA) {
        for (key, entry) in &map.0 {
            if entry.flags.propagated() && is_baggage_key(key) && !claimed.contains(&&**key) {
                add(key, &entry.value, entry.properties.as_deref());
            }
        }
    }
    if added > 0 {
        if let Ok(value) = HeaderValue::from_str(&out) {
            headers.insert(BAGGAGE, value);
        }
    }
    left_out
}

/// What to do with a bad header or entry.
#[derive(Clone)]
pub(crate) enum Policy {
    /// Answer `400` and set nothing.
    Reject,
    /// Skip what is bad, tell the callback, set the rest.
    Ignore(std::sync::Arc<dyn Fn(&BaggageError) + Send + Sync>),
}

/// Reads the `baggage` headers of a request into the current context: the claimed
/// variables, and the other entries as metadata to forward. Under [`Policy::Reject`] the
/// first error is returned and nothing is set.
pub(crate) fn accept(headers: &HeaderMap, policy: &Policy) -> Result<(), BaggageError> {
    let mut values = headers.get_all(BAGGAGE).iter().peekable();
    if values.peek().is_none() {
        return Ok(());
    }
    let fail = |err: BaggageError| match policy {
        Policy::Reject => Err(err),
        Policy::Ignore(report) => {
            report(&err);
            Ok(())
        }
    };
    let mut joined = String::new();
    for value in values {
        let Ok(text) = value.to_str() else {
            return fail(BaggageError::NotText);
        };
        if text.trim_matches([' ', '\t']).is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(text);
    }
    let members = match header::parse(&joined) {
        Ok(members) => members,
        Err(err) => return fail(err),
    };
    let registry = registry::registry();
    let mut staged = Vec::new();
    let mut forwarded = Vec::new();
    for member in members {
        let parsed = member.and_then(|member| match registry.by_key.get(member.key) {
            Some(claim) => claim.parse(&member.value).map(|s| (Some(s), member)),
            None => Ok((None, member)),
        });
        match parsed {
            Ok((Some(registry::Staged(leaf)), _)) => staged.push(leaf),
            Ok((None, member)) => forwarded.push((
                member.key.into(),
                Entry {
                    value: member.value.into(),
                    flags: MetadataFlags::BAGGAGE,
                    properties: member.properties,
                },
            )),
            Err(err) => fail(err)?,
        }
    }
    if !staged.is_empty() {
        let replaced = current::write(|frame| {
            staged
                .into_iter()
                .filter_map(|leaf| frame.map.insert(leaf))
                .collect::<Vec<_>>()
        });
        // Replaced values are dropped here, with the thread's state released.
        drop(replaced);
    }
    if !forwarded.is_empty() {
        let _ = metadata::update(|map| map.0.extend(forwarded));
    }
    Ok(())
}

/// Generated code's entry point, chosen by the feature: here, `#[context_var(baggage = …)]`
/// implements the key and submits the variable's claim.
#[doc(hidden)]
#[macro_export]
macro_rules! __claim_baggage {
    ($var:ident; $key:literal) => {
        impl $crate::baggage::BaggageKey for $var {
            const KEY: &'static str = $key;
            fn to_text(value: &Self::Value) -> ::std::string::String {
                #[allow(unused_imports)]
                use $crate::baggage::{ViaNothing as _, ViaText as _};
                (&&$crate::baggage::TextProbe::<Self::Value>::new()).encode(value)
            }
            fn from_text(
                text: &::core::primitive::str,
            ) -> ::core::result::Result<Self::Value, ::std::string::String> {
                #[allow(unused_imports)]
                use $crate::baggage::{ViaNothing as _, ViaText as _};
                (&&$crate::baggage::TextProbe::<Self::Value>::new()).decode(text)
            }
        }
        $crate::baggage::inventory::submit! {
            $crate::baggage::Claim::new(&$var, ::core::module_path!())
        }
    };
}

/// With the feature, `#[context_var(baggage = …)]` needs nothing more.
#[doc(hidden)]
#[macro_export]
macro_rules! __baggage_feature {
    () => {};
}
