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
//! - **Any carrier** (a message broker's headers, a plain map): [`inject_into`] writes and
//!   [`extract`] reads into a new context, through the small [`Carrier`] trait.
//!
//! The `contextvars` crate's documentation of this module tells the whole story with its
//! macros; the items here are the runtime part.

mod carrier;
mod client;
mod error;
mod header;
mod registry;
mod server;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::context::Context;
use crate::current;
use crate::map::Leaf;
use crate::metadata::{self, Entry, METADATA, MetadataFlags};

pub use carrier::Carrier;
pub use client::{BaggageLayer, BaggageService};
pub use error::BaggageError;
#[cfg(feature = "opentelemetry")]
pub(crate) use header::write_member;
pub use header::{MAX_BYTES, MAX_ENTRIES, is_baggage_key};
pub use registry::claimed_keys;
#[doc(hidden)]
pub use registry::{BaggageKey, Claim, Claims, Staged, TextProbe, ViaNothing, ViaText};
pub use server::{AcceptBaggage, AcceptBaggageLayer, AcceptFuture, JsonBadRequest, Reject};

#[doc(hidden)]
pub use inventory;

/// The header's name, `baggage`.
pub const BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// The key baggage travels under in any carrier.
const BAGGAGE_KEY: &str = "baggage";

/// Writes the current context's baggage into `headers`: every variable declared with
/// `#[context_var(baggage = "…")]` that is set here, then every [metadata map](crate::metadata)
/// entry set with [`MetadataFlags::BAGGAGE`] (which includes the entries a server received and
/// no variable claimed). For clients that are not tower services; [`BaggageLayer`] does this
/// for those that are.
///
/// Lines already in `headers` are never removed or changed, and their entries win: a key
/// they hold is not written again (they were put on this request on purpose). The new
/// entries go at the end of the first `baggage` line, whose text is kept byte for byte
/// (OpenTelemetry's propagators read only the first line), or, where that line is not
/// text, on a line of their own after the others.
///
/// Values are percent-encoded so that OpenTelemetry's Rust and Python propagators read them
/// back exactly: everything outside printable ASCII, and space, `"`, `,`, `;`, `\`, `%`,
/// `=`, `+`. An entry received from a header and not changed since is written back exactly
/// as it came, escapes and properties included, so a service in the middle passes on what
/// it got.
///
/// The result stays within the W3C limits ([`MAX_ENTRIES`] entries, [`MAX_BYTES`] bytes,
/// counting the lines already there): an entry that would pass them is left out, and the
/// number left out is returned. Where nothing is to be added, `headers` is left as it was.
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
pub fn inject(headers: &mut HeaderMap) -> usize {
    inject_from(&Context::current(), headers)
}

/// [`inject`] into any [`Carrier`] of string pairs: a message broker's headers, a
/// `HashMap<String, String>`, a `BTreeMap<String, String>`, an `http::HeaderMap`. Writes the
/// `baggage` key only, with the same rules: what the carrier already holds under it is kept
/// and wins, and the result stays within the limits (the number of entries left out is
/// returned).
///
/// ```
/// # use context_core as contextvars;
/// use std::collections::HashMap;
///
/// use contextvars::baggage::inject_into;
/// use contextvars::metadata::{MetadataFlags, set_metadata_with};
///
/// set_metadata_with("region", "eu west", MetadataFlags::BAGGAGE);
/// let mut headers = HashMap::from([("baggage".to_string(), "a=1".to_string())]);
/// assert_eq!(inject_into(&mut headers), 0);
/// assert_eq!(headers["baggage"], "a=1,region=eu%20west");
/// ```
pub fn inject_into<C: Carrier + ?Sized>(carrier: &mut C) -> usize {
    inject_from(&Context::current(), carrier)
}

/// Reads the baggage a [`Carrier`] holds under `baggage` (an incoming message's headers)
/// into a new context, and returns it: a copy of the current context with the carrier's
/// entries added, as [`accept_baggage`](crate::tower::ContextLayer::accept_baggage) adds a
/// request's. Run the message's work in it with [`Context::run`] or
/// [`FutureExt::with_context`](crate::FutureExt::with_context).
///
/// The header is checked exactly as `accept_baggage` checks one, with the same limits and
/// errors; the entries no variable claims are kept as metadata to forward; what the current
/// context already holds for a variable or metadata key wins over the carrier's entry. It
/// never sets anything in the current context, so it works anywhere, in a tokio task that
/// has no context too (the copy is then empty but for the carrier's entries).
///
/// # Errors
/// The first thing wrong with the header, as a [`BaggageError`] that names the entry by its
/// key, or quotes it where it has none ([`BaggageError::key`]). Nothing is returned from a
/// bad header: reject the message, or handle it without baggage.
///
/// # Panics
/// If two variables in the program claim the same baggage key, as `accept_baggage` does.
///
/// ```
/// # use context_core as contextvars;
/// use std::collections::BTreeMap;
///
/// use contextvars::baggage::extract;
/// use contextvars::metadata::get_metadata;
///
/// let message = BTreeMap::from([("baggage".to_string(), "campaign=spring%20sale".to_string())]);
/// let mut context = extract(&message).unwrap();
/// assert_eq!(context.run(|| get_metadata("campaign")).as_deref(), Some("spring sale"));
///
/// let bad = BTreeMap::from([("baggage".to_string(), "campaign=50%off".to_string())]);
/// assert_eq!(extract(&bad).unwrap_err().key(), Some("campaign"));
/// ```
#[track_caller]
pub fn extract<C: Carrier + ?Sized>(carrier: &C) -> Result<Context, BaggageError> {
    Extractor::new().extract(carrier)
}

/// [`extract`] with options: the keys read, whether entries no variable claims are
/// forwarded, and what to do with a bad entry, as
/// [`accept_baggage`](crate::tower::ContextLayer::accept_baggage)'s options say for a server.
/// Made once (it is `Clone`, `Send` and `Sync`) and used for every message of a consumer.
///
/// ```
/// # use context_core as contextvars;
/// use std::collections::BTreeMap;
///
/// use contextvars::baggage::Extractor;
/// use contextvars::metadata::get_metadata;
///
/// let extractor = Extractor::new()
///     .only_keys(["campaign", "source"])
///     .forward_unclaimed(false)
///     .ignore_bad_entries(|err| eprintln!("baggage entry ignored: {err}"));
/// let message = BTreeMap::from([(
///     "baggage".to_string(),
///     "campaign=spring,region=eu,source=50%off".to_string(),
/// )]);
/// // `source` has a bad escape: reported and left out; `region` is not listed: not read.
/// let mut context = extractor.extract(&message).unwrap();
/// let read = context.run(|| {
///     ["campaign", "region", "source"].map(|key| get_metadata(key))
/// });
/// assert_eq!(read, [Some("spring".to_string()), None, None]);
/// ```
#[derive(Clone)]
pub struct Extractor {
    settings: Accept,
}

impl Extractor {
    /// What [`extract`] does: every key read, unclaimed entries forwarded, a bad header an
    /// error.
    #[must_use]
    pub fn new() -> Self {
        Extractor {
            settings: Accept::new(),
        }
    }

    /// Reads only the entries with these keys from a carrier; the others are left out
    /// whole: not set, not kept, not forwarded, and not checked beyond the header's syntax
    /// and limits (a bad value under another key is no error). Calling it again replaces
    /// the list. Baggage is untrusted input: list what the consumer needs from its
    /// producers, and nothing it would trust for a decision.
    #[must_use]
    pub fn only_keys<K: Into<String>>(mut self, keys: impl IntoIterator<Item = K>) -> Self {
        self.settings.only_keys(keys);
        self
    }

    /// Whether the entries no variable claims are forwarded (the default: `true`). With
    /// `false` they are still kept in the returned context's
    /// [metadata map](crate::metadata), where
    /// [`get_metadata`](crate::metadata::get_metadata) reads them, but [`inject`] and
    /// [`inject_into`] do not send them on.
    #[must_use]
    pub fn forward_unclaimed(mut self, forward: bool) -> Self {
        self.settings.forward = forward;
        self
    }

    /// Skips what is bad instead of failing: a bad entry (malformed, a bad `%` escape, a
    /// value its variable's type does not parse) is left out and the good ones are read; a
    /// bad header as a whole (over the limits, not text) is left out whole. Each error is
    /// passed to `report`, the place to log it, and [`extract`](Self::extract) returns `Ok`.
    #[must_use]
    pub fn ignore_bad_entries(
        mut self,
        report: impl Fn(&BaggageError) + Send + Sync + 'static,
    ) -> Self {
        self.settings.policy = Policy::Ignore(std::sync::Arc::new(report));
        self
    }

    /// The carrier's entries read into a copy of the current context, as [`extract`] reads
    /// them, with these options.
    ///
    /// # Errors
    /// As [`extract`]'s, unless bad entries are ignored.
    ///
    /// # Panics
    /// If two variables in the program claim the same baggage key, as `extract` does.
    #[track_caller]
    pub fn extract<C: Carrier + ?Sized>(&self, carrier: &C) -> Result<Context, BaggageError> {
        let (context, accepted) = extract_into(Context::current(), carrier, &self.settings);
        accepted.map(|()| context)
    }
}

impl Default for Extractor {
    fn default() -> Self {
        Extractor::new()
    }
}

impl std::fmt::Debug for Extractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extractor")
            .field("only_keys", &self.settings.keys)
            .field("forward_unclaimed", &self.settings.forward)
            .field(
                "ignore_bad_entries",
                &matches!(self.settings.policy, Policy::Ignore(_)),
            )
            .finish()
    }
}

/// The carrier's entries read into `context` (the current context, or a copy of it) as
/// `settings` say: what `extract` and OpenTelemetry's propagator share. `accept` returns its
/// error before it sets anything, so after an error `context` comes back as it went in.
#[track_caller]
fn extract_into<C: Carrier + ?Sized>(
    mut context: Context,
    carrier: &C,
    settings: &Accept,
) -> (Context, Result<(), BaggageError>) {
    registry::assert_no_conflict();
    let accepted = context.run(|| accept(carrier.get_all(BAGGAGE_KEY), settings));
    (context, accepted)
}

/// [`extract`] for OpenTelemetry's propagator, which runs while OpenTelemetry's current
/// context is borrowed: the copy of the current context carries no span and no OpenTelemetry
/// context, so entering it attaches nothing. A bad header leaves the copy as it was and comes
/// back beside it.
#[cfg(feature = "opentelemetry")]
#[track_caller]
pub(crate) fn extract_detached<C: Carrier + ?Sized>(
    carrier: &C,
) -> (Context, Result<(), BaggageError>) {
    extract_into(
        Context::current().without_carried(),
        carrier,
        &Accept::new(),
    )
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
pub fn inject_from<C: Carrier + ?Sized>(context: &Context, carrier: &mut C) -> usize {
    // What the lines already there hold: their keys, entries and bytes (joined with commas,
    // as a receiver joins them). A line that is not text is read for its keys as best it can.
    let mut keys: HashSet<String> = HashSet::new();
    let (mut count, mut bytes, mut lines) = (0, 0, 0);
    for line in carrier.get_all(BAGGAGE_KEY) {
        let text = match line {
            Ok(text) => Cow::Borrowed(text),
            Err(bytes) => String::from_utf8_lossy(bytes),
        };
        bytes += text.len() + usize::from(lines > 0);
        lines += 1;
        for member in text.split(',') {
            let member = member.trim_matches([' ', '\t']);
            if !member.is_empty() {
                keys.insert(header::member_key(member).to_string());
                count += 1;
            }
        }
    }
    let mut ours = String::new();
    let (mut added, mut left_out) = (0, 0);
    let mut member = String::new();
    let received = context.get(&RECEIVED);
    let mut add = |member: &str| {
        // A comma before it: after the lines there, or after the entries added before it.
        let comma = usize::from(lines > 0 || added > 0);
        if count + 1 > MAX_ENTRIES || bytes + comma + member.len() > MAX_BYTES {
            left_out += 1;
            return;
        }
        if added > 0 {
            ours.push(',');
        }
        ours.push_str(member);
        bytes += comma + member.len();
        count += 1;
        added += 1;
    };
    // The claimed keys are distinct, and so are metadata keys; a metadata entry under a
    // claimed key is skipped.
    let mut claimed = Vec::new();
    for claim in &registry::registry().all {
        let key = claim.key();
        if let Some(value) = claim.value_in(context) {
            claimed.push(key);
            if keys.contains(key) {
                continue;
            }
            member.clear();
            match received.and_then(|r| r.unchanged(key, &value)) {
                Some(raw) => {
                    header::write_raw(&mut member, key, &raw.text, raw.properties.as_deref());
                }
                None => header::write_member(&mut member, key, &value, None),
            }
            add(&member);
        }
    }
    if let Some(map) = context.get(&METADATA) {
        for (key, entry) in &map.0 {
            if !entry.flags.propagated()
                || !is_baggage_key(key)
                || claimed.contains(&&**key)
                || keys.contains(&**key)
            {
                continue;
            }
            member.clear();
            let properties = entry.properties.as_deref();
            match received.and_then(|r| r.unchanged(key, &entry.value)) {
                Some(raw) => header::write_raw(&mut member, key, &raw.text, properties),
                None => header::write_member(&mut member, key, &entry.value, properties),
            }
            add(&member);
        }
    }
    if added > 0 {
        carrier.add(BAGGAGE_KEY, &ours);
    }
    left_out
}

/// How a received header is read: made by `accept_baggage` and its options.
#[derive(Clone)]
pub(crate) struct Accept {
    pub(crate) policy: Policy,
    /// The only keys taken from a header, where the application limited them.
    pub(crate) keys: Option<std::sync::Arc<[Box<str>]>>,
    /// Whether the entries no variable claims are forwarded (else only kept to read).
    pub(crate) forward: bool,
}

impl Accept {
    pub(crate) fn new() -> Self {
        Accept {
            policy: Policy::Reject,
            keys: None,
            forward: true,
        }
    }

    /// Limits what is read to `keys` (`only_keys` of the layer and of `Extractor`).
    pub(crate) fn only_keys<K: Into<String>>(&mut self, keys: impl IntoIterator<Item = K>) {
        let keys: Vec<Box<str>> = keys
            .into_iter()
            .map(|k| k.into().into_boxed_str())
            .collect();
        self.keys = Some(keys.into());
    }

    fn takes(&self, key: &str) -> bool {
        self.keys
            .as_ref()
            .is_none_or(|keys| keys.iter().any(|k| &**k == key))
    }
}

/// What to do with a bad header or entry.
#[derive(Clone)]
pub(crate) enum Policy {
    /// Answer `400` and set nothing.
    Reject,
    /// Skip what is bad, tell the callback, set the rest.
    Ignore(std::sync::Arc<dyn Fn(&BaggageError) + Send + Sync>),
}

/// An entry as it was received, for writing it back unchanged.
#[derive(Clone)]
struct AsReceived {
    /// The value it was read as (decoded).
    value: Box<str>,
    /// The value as it came.
    text: Box<str>,
    /// Its properties, for a claimed entry (an unclaimed one keeps them in its metadata
    /// entry).
    properties: Option<std::sync::Arc<str>>,
}

/// The entries a context received whose header form a fresh write would not reproduce
/// (escapes written otherwise, properties of a claimed entry), by key.
#[derive(Clone, Default)]
struct Received(BTreeMap<Box<str>, AsReceived>);

impl Received {
    /// The entry received under `key`, if the context still holds the value it arrived with.
    fn unchanged(&self, key: &str, value: &str) -> Option<&AsReceived> {
        self.0.get(key).filter(|raw| &*raw.value == value)
    }
}

struct ReceivedVar {}

// Boxed strings in a `BTreeMap`: a drop only frees memory.
crate::quiet::drops_quietly!(Received);

impl crate::var::Key for ReceivedVar {
    type Value = Received;
    type Default = crate::var::NoDefault;
    const HIDDEN: bool = true;

    fn quiet_drop_proof() -> Option<crate::quiet::QuietDropProof<Received>> {
        Some(crate::quiet::QuietDropProof::new())
    }

    fn fmt_value(value: &Received, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(value.0.keys()).finish()
    }
}

/// The header form of received entries, where it differs from what a write would make.
static RECEIVED: crate::var::ContextVar<ReceivedVar> =
    crate::var::ContextVar::new("baggage.received");

/// The record to keep of `member` (taken from a header), if a fresh write would not give
/// back what came.
fn record(
    member: &header::Member<'_>,
    properties: Option<std::sync::Arc<str>>,
) -> Option<(Box<str>, AsReceived)> {
    // A value borrowed from the header had no escape: it is its own text, and is written
    // back as it came unless it holds what the writer escapes.
    let borrowed = matches!(member.value, Cow::Borrowed(_));
    if properties.is_none()
        && (if borrowed {
            !member.raw.bytes().any(|b| matches!(b, b'=' | b'+'))
        } else {
            header::writes_as(&member.value, member.raw)
        })
    {
        return None;
    }
    Some((
        member.key.into(),
        AsReceived {
            value: (*member.value).into(),
            text: member.raw.into(),
            properties,
        },
    ))
}

/// Reads the `baggage` header lines of a request (`Ok` with the text of each, `Err` with the
/// bytes of one that is not text) into the current context: the claimed variables, and the
/// other entries as metadata to forward. What the context already holds (the application's
/// own values) is never replaced. Under [`Policy::Reject`] the first error is returned and
/// nothing is set.
pub(crate) fn accept<'a>(
    lines: impl IntoIterator<Item = Result<&'a str, &'a [u8]>>,
    settings: &Accept,
) -> Result<(), BaggageError> {
    let fail = |err: BaggageError| match &settings.policy {
        Policy::Reject => Err(err),
        Policy::Ignore(report) => {
            report(&err);
            Ok(())
        }
    };
    // The lines joined with commas, as one header: borrowed where there is one line of text
    // (the usual case), so that the entries parsed from it borrow the request's header.
    let mut joined: Cow<'_, str> = Cow::Borrowed("");
    for value in lines {
        let Ok(text) = value else {
            return fail(BaggageError::NotText);
        };
        if header::trim_ows(text).is_empty() {
            continue;
        }
        if joined.is_empty() {
            joined = Cow::Borrowed(text);
        } else {
            let line = joined.to_mut();
            line.push(',');
            line.push_str(text);
        }
    }
    if joined.is_empty() || accept_plain(joined.as_bytes(), settings) {
        return Ok(());
    }
    accept_in_full(&joined, settings)
}

/// [`accept`] for the usual request, whose `baggage` header is one line: read at once where
/// it holds plain entries only ([`accept_plain`]), else as `accept` reads any header. Plain
/// entries are visible ASCII, which `accept_plain` checks of each byte it reads, so the line
/// is checked as text (`HeaderValue::to_str`) only on the second way.
#[inline]
pub(crate) fn accept_line(line: &HeaderValue, settings: &Accept) -> Result<(), BaggageError> {
    if accept_plain(line.as_bytes(), settings) {
        return Ok(());
    }
    accept([line.to_str().map_err(|_| line.as_bytes())], settings)
}

/// The most entries of each kind (claimed, and kept as metadata) that [`accept_plain`]
/// stages without allocating; a header with more is read in full.
const STAGED: usize = 8;

/// Reads the usual header, made of plain entries only (`key=value`, no escape, no property,
/// no key given twice, at most [`STAGED`] of each kind, every value parsed by its variable),
/// into the current context, without allocating beyond the values themselves. Returns
/// `false`, having set nothing, where the header is anything else: [`accept_in_full`] then
/// reads it, and names the error where there is one.
fn accept_plain(header: &[u8], settings: &Accept) -> bool {
    let registry = registry::registry();
    let mut claimed: [Option<Leaf>; STAGED] = std::array::from_fn(|_| None);
    let mut claimed_len = 0;
    // Made at the first entry no variable claims: most headers have none.
    let mut unclaimed: Option<[(&str, &str); STAGED]> = None;
    let mut unclaimed_len = 0;
    for entry in header::plain_entries(header) {
        let Some(entry) = entry else {
            return false;
        };
        if !settings.takes(entry.key) {
            continue;
        }
        if let Some(claim) = registry.claim(entry.key) {
            let Some(slot) = claimed.get_mut(claimed_len) else {
                return false;
            };
            *slot = claim.stage(entry.value).map(|registry::Staged(leaf)| leaf);
            let Some(key) = slot.as_ref().map(|leaf| leaf.key) else {
                return false;
            };
            if claimed[..claimed_len]
                .iter()
                .flatten()
                .any(|l| l.key == key)
            {
                return false;
            }
            claimed_len += 1;
        } else {
            let staged = unclaimed.get_or_insert([("", ""); STAGED]);
            let (before, after) = staged.split_at_mut(unclaimed_len);
            let Some(slot) = after.first_mut() else {
                return false;
            };
            if before.iter().any(|(key, _)| *key == entry.key) {
                return false;
            }
            *slot = (entry.key, entry.value);
            unclaimed_len += 1;
        }
    }
    if claimed_len > 0 {
        // A variable the context holds was set by the application: it wins, and the value
        // read from the header stays in its slot, dropped with the thread's state released.
        let _ = current::write(|frame| frame.map.insert_vacant(&mut claimed[..claimed_len]));
    }
    if let Some(unclaimed) = unclaimed {
        let flags = if settings.forward {
            MetadataFlags::BAGGAGE
        } else {
            MetadataFlags::NONE
        };
        let _ = metadata::update(|map| {
            for &(key, value) in &unclaimed[..unclaimed_len] {
                // An entry the application set (private or not) wins.
                if !map.0.contains_key(key) {
                    let entry = Entry {
                        value: value.into(),
                        flags,
                        properties: None,
                    };
                    map.0.insert(key.into(), entry);
                }
            }
        });
    }
    true
}

/// Reads a header of any form into the current context, as [`accept`] says.
fn accept_in_full(joined: &str, settings: &Accept) -> Result<(), BaggageError> {
    let fail = |err: BaggageError| match &settings.policy {
        Policy::Reject => Err(err),
        Policy::Ignore(report) => {
            report(&err);
            Ok(())
        }
    };
    let members = match header::parse(joined) {
        Ok(members) => members,
        Err(err) => return fail(err),
    };
    let registry = registry::registry();
    let mut staged = Vec::new();
    let mut unclaimed = Vec::new();
    for member in members {
        // Keys the application did not list are not read at all, good or bad; an entry too
        // malformed to have a key is still an error of the header.
        let member = match member {
            Ok(member) if settings.takes(member.key) => member,
            Err(err) if err.entry_key().is_none_or(|key| settings.takes(key)) => {
                fail(err)?;
                continue;
            }
            Ok(_) | Err(_) => continue,
        };
        match registry.claim(member.key) {
            Some(claim) => match claim.parse(&member.value) {
                Ok(registry::Staged(leaf)) => staged.push((leaf, member)),
                Err(err) => fail(err)?,
            },
            None => unclaimed.push(member),
        }
    }
    // Every entry has been read and checked: of a key given more than once, the last good
    // entry is kept (a bad one, refused above or skipped and reported, hides nothing).
    header::keep_last_of_each(&mut staged, |(leaf, _)| leaf.key);
    header::keep_last_of_each(&mut unclaimed, |member| member.key);
    let mut records = Vec::new();
    if !staged.is_empty() {
        let replaced = current::write(|frame| {
            let mut replaced = Vec::new();
            for (leaf, member) in staged {
                // A variable the context holds was set by the application: it wins.
                if frame.map.get(leaf.key).is_some() {
                    replaced.push(leaf.value);
                    continue;
                }
                records.extend(record(&member, member.properties.clone()));
                replaced.extend(frame.map.insert(leaf));
            }
            replaced
        });
        // Replaced values are dropped here, with the thread's state released.
        drop(replaced);
    }
    if !unclaimed.is_empty() {
        let flags = if settings.forward {
            MetadataFlags::BAGGAGE
        } else {
            MetadataFlags::NONE
        };
        let _ = metadata::update(|map| {
            for member in unclaimed {
                // An entry the application set (private or not) wins.
                if map.0.contains_key(member.key) {
                    continue;
                }
                records.extend(record(&member, None));
                map.0.insert(
                    member.key.into(),
                    Entry {
                        value: member.value.into(),
                        flags,
                        properties: member.properties,
                    },
                );
            }
        });
    }
    if !records.is_empty() {
        let mut received = RECEIVED.with(|r| r.cloned().unwrap_or_default());
        received.0.extend(records);
        let _ = RECEIVED.try_set(received);
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
