//! A string-keyed metadata map in the context, for what is not known at compile time.
//!
//! Context variables are typed and declared once, in code. Some values are not: fields a
//! logger binds for the rest of a request (`bind(**fields)`), free-form tags a tenant
//! configures, baggage entries another service sent that no variable here claims. The
//! metadata map holds them: string keys, string values, in the context like any variable.
//!
//! - **Copy-on-write.** A set binds a new version of the map in the current context: a
//!   snapshot taken before ([`Context::current`](crate::Context::current), a spawned task) keeps
//!   what it had. The versions share all but the entries on the way to the key set, so a set
//!   costs O(log n) in the number of entries and a snapshot copies nothing.
//! - **Inherited like any variable**: by spawned tasks, threads started with
//!   [`thread::spawn`](crate::thread::spawn), requests served through the tower layer (from its
//!   base context), and the code a [`Context::run`](crate::Context::run) runs.
//! - **Private unless opted in.** [`set_metadata`] stores an entry that is neither logged nor
//!   sent anywhere. [`set_metadata_with`] takes [`MetadataFlags`]: [`MetadataFlags::LOG`] writes
//!   the entry as a field of its own on every log line (with the `tracing` feature's
//!   `ContextFields`), [`MetadataFlags::BAGGAGE`] sends it to other services in the `baggage`
//!   header (with the `baggage` feature). Context often holds secrets, so both are opt-in per
//!   entry.
//!
//! ```
//! # use context_core as contextvars;
//! use contextvars::Context;
//! use contextvars::metadata::{get_all_metadata, get_metadata, set_metadata};
//!
//! set_metadata("plan", "gold");
//! let snapshot = Context::current();
//! set_metadata("plan", "platinum");
//! set_metadata("region", "eu-west");
//!
//! assert_eq!(get_metadata("plan").as_deref(), Some("platinum"));
//! assert_eq!(get_all_metadata().len(), 2);
//! // The snapshot taken before kept its own map.
//! let mut snapshot = snapshot;
//! assert_eq!(snapshot.run(|| get_metadata("plan")).as_deref(), Some("gold"));
//! assert_eq!(snapshot.run(|| get_metadata("region")), None);
//! ```

mod tree;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::BitOr;
use std::sync::Arc;

use crate::current;
use crate::error::SetError;
use crate::map::Value;
use crate::var::{ContextVar, Key, NoDefault};

use self::tree::Tree;

/// What may be done with a metadata entry besides reading it: nothing ([`NONE`](Self::NONE),
/// the default), [`LOG`](Self::LOG), [`BAGGAGE`](Self::BAGGAGE), or both (`LOG | BAGGAGE`).
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::metadata::MetadataFlags;
///
/// let both = MetadataFlags::LOG | MetadataFlags::BAGGAGE;
/// assert!(both.logged() && both.propagated());
/// assert!(!MetadataFlags::NONE.logged());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MetadataFlags(u8);

impl MetadataFlags {
    /// Neither logged nor propagated.
    pub const NONE: MetadataFlags = MetadataFlags(0);
    /// Written as a field of its own on log lines (the `tracing` feature's `ContextFields`).
    pub const LOG: MetadataFlags = MetadataFlags(1);
    /// Sent to other services as an entry of the `baggage` header (the `baggage` feature).
    /// Only an entry whose key is a valid baggage key (an HTTP token) is sent.
    pub const BAGGAGE: MetadataFlags = MetadataFlags(2);

    /// Whether [`LOG`](Self::LOG) is set.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::metadata::MetadataFlags;
    /// assert!(MetadataFlags::LOG.logged());
    /// ```
    #[must_use]
    pub const fn logged(self) -> bool {
        self.0 & Self::LOG.0 != 0
    }

    /// Whether [`BAGGAGE`](Self::BAGGAGE) is set.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::metadata::MetadataFlags;
    /// assert!(MetadataFlags::BAGGAGE.propagated());
    /// ```
    #[must_use]
    pub const fn propagated(self) -> bool {
        self.0 & Self::BAGGAGE.0 != 0
    }
}

impl BitOr for MetadataFlags {
    type Output = MetadataFlags;

    fn bitor(self, other: MetadataFlags) -> MetadataFlags {
        MetadataFlags(self.0 | other.0)
    }
}

impl fmt::Debug for MetadataFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.logged(), self.propagated()) {
            (false, false) => f.write_str("NONE"),
            (true, false) => f.write_str("LOG"),
            (false, true) => f.write_str("BAGGAGE"),
            (true, true) => f.write_str("LOG | BAGGAGE"),
        }
    }
}

/// One entry of the map.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) value: Arc<str>,
    pub(crate) flags: MetadataFlags,
    /// Baggage properties (`;k=v` after the value) of an entry that arrived in a `baggage`
    /// header, already in header form; sent on with the entry.
    #[cfg_attr(not(feature = "baggage"), allow(dead_code))]
    pub(crate) properties: Option<Arc<str>>,
}

/// The map as one context variable holds it, sorted by key.
#[derive(Clone, Default)]
pub(crate) struct Metadata(pub(crate) Tree<Arc<str>, Entry>);

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may be private: only logged ones are shown, the rest as `..`.
        let mut map = f.debug_map();
        for (key, entry) in &self.0 {
            if entry.flags.logged() {
                map.entry(key, &entry.value);
            } else {
                map.entry(key, &format_args!(".."));
            }
        }
        map.finish()
    }
}

/// The key type of [`METADATA`].
pub(crate) struct MetadataVar {}

// Keys and values of `Arc<str>`, in nodes behind `Arc`s: a drop only frees memory.
crate::quiet::drops_quietly!(Metadata);

impl Key for MetadataVar {
    type Value = Metadata;
    type Default = NoDefault;

    fn quiet_drop_proof() -> Option<crate::quiet::QuietDropProof<Metadata>> {
        Some(crate::quiet::QuietDropProof::new())
    }

    fn fmt_value(value: &Metadata, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(value, f)
    }
}

/// The variable that holds the map. Its own `LOG` is off: logs write its entries one by one.
pub(crate) static METADATA: ContextVar<MetadataVar> = ContextVar::new("metadata");

/// Sets `key` to `value` in the current context's metadata, neither logged nor propagated
/// (see [`set_metadata_with`] to opt in). Replaces an entry of the same key, flags included.
///
/// # Panics
/// Where [`ContextVar::set`] panics: in a tokio task that runs outside any context (the
/// message names the fix). [`try_set_metadata_with`] returns the error instead.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::metadata::{get_metadata, set_metadata};
///
/// set_metadata("plan", "gold");
/// assert_eq!(get_metadata("plan").as_deref(), Some("gold"));
/// ```
#[track_caller]
pub fn set_metadata(key: impl Into<String>, value: impl Into<String>) {
    set_metadata_with(key, value, MetadataFlags::NONE);
}

/// Sets `key` to `value` in the current context's metadata, logged and propagated as
/// `flags` say.
///
/// # Panics
/// As [`set_metadata`].
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::metadata::{MetadataFlags, get_metadata, set_metadata_with};
///
/// set_metadata_with("feature", "new-checkout", MetadataFlags::LOG | MetadataFlags::BAGGAGE);
/// assert_eq!(get_metadata("feature").as_deref(), Some("new-checkout"));
/// ```
#[track_caller]
pub fn set_metadata_with(key: impl Into<String>, value: impl Into<String>, flags: MetadataFlags) {
    if let Err(err) = try_set_metadata_with(key, value, flags) {
        match err {
            // As `ContextVar::set`: nothing to set at thread exit, and no panic there.
            SetError::ThreadExiting { .. } => {}
            err => panic!("{err}"),
        }
    }
}

/// [`set_metadata_with`], returning an error where it would panic.
///
/// # Errors
/// Those of [`ContextVar::try_set`]: no context to set in.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::metadata::{MetadataFlags, try_set_metadata_with};
///
/// assert!(try_set_metadata_with("plan", "gold", MetadataFlags::NONE).is_ok());
/// ```
pub fn try_set_metadata_with(
    key: impl Into<String>,
    value: impl Into<String>,
    flags: MetadataFlags,
) -> Result<(), SetError> {
    let entry = Entry {
        value: value.into().into(),
        flags,
        properties: None,
    };
    let key: Arc<str> = key.into().into();
    update(|map| {
        map.0.insert(key, entry);
    })
}

/// Removes `key` from the current context's metadata; returns its value, if it had one.
///
/// # Panics
/// As [`set_metadata`], where there is something to remove.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::metadata::{get_metadata, remove_metadata, set_metadata};
///
/// set_metadata("plan", "gold");
/// assert_eq!(remove_metadata("plan").as_deref(), Some("gold"));
/// assert_eq!(get_metadata("plan"), None);
/// ```
#[track_caller]
pub fn remove_metadata(key: &str) -> Option<String> {
    if !METADATA.with(|map| map.is_some_and(|map| map.0.contains_key(key))) {
        return None;
    }
    let mut removed = None;
    if let Err(err) = update(|map| removed = map.0.remove(key)) {
        match err {
            SetError::ThreadExiting { .. } => {}
            err => panic!("{err}"),
        }
    }
    removed.map(|entry| entry.value.to_string())
}

/// The value of `key` in the current context's metadata.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::metadata::get_metadata;
///
/// assert_eq!(get_metadata("nothing here"), None);
/// ```
#[must_use]
pub fn get_metadata(key: &str) -> Option<String> {
    METADATA.with(|map| map.and_then(|map| map.0.get(key).map(|e| e.value.to_string())))
}

/// The flags `key` was set with, if it is set.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::metadata::{MetadataFlags, metadata_flags, set_metadata_with};
///
/// set_metadata_with("feature", "x", MetadataFlags::LOG);
/// assert_eq!(metadata_flags("feature"), Some(MetadataFlags::LOG));
/// ```
#[must_use]
pub fn metadata_flags(key: &str) -> Option<MetadataFlags> {
    METADATA.with(|map| map.and_then(|map| map.0.get(key).map(|e| e.flags)))
}

/// Every entry of the current context's metadata, sorted by key.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::metadata::{get_all_metadata, set_metadata};
///
/// set_metadata("b", "2");
/// set_metadata("a", "1");
/// let all: Vec<_> = get_all_metadata().into_iter().collect();
/// assert_eq!(all, [("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())]);
/// ```
#[must_use]
pub fn get_all_metadata() -> BTreeMap<String, String> {
    METADATA.with(|map| {
        map.map(|map| {
            map.0
                .iter()
                .map(|(k, e)| (k.to_string(), e.value.to_string()))
                .collect()
        })
        .unwrap_or_default()
    })
}

/// Changes the current map with `f` and binds the result.
///
/// The map is taken out of the context for the change (an empty one holds its place): a map
/// no snapshot shares (the common case, sets in a row) then changes in place, and a shared
/// one is cloned first (one `Arc`), its nodes copied on the way to the keys `f` changes and
/// the rest shared, so the snapshot keeps what it had. `f` only inserts and removes strings:
/// it neither reads nor sets a variable, and does not panic.
pub(crate) fn update(f: impl FnOnce(&mut Metadata)) -> Result<(), SetError> {
    let key = METADATA.key();
    let replaced = current::write(|frame| {
        let Some(value) = frame.map.value_mut(key) else {
            // The first entry of this context.
            let mut map = Metadata::default();
            f(&mut map);
            return frame.map.insert(METADATA.leaf(map));
        };
        // Changed in place where this context alone holds the map, else in a copy of it.
        if let Some(map) = value.get_mut::<Metadata>() {
            f(map);
            return None;
        }
        let mut map = value
            .as_any()
            .downcast_ref::<Metadata>()
            .cloned()
            .unwrap_or_default();
        f(&mut map);
        Some(std::mem::replace(value, Value::new(map, None)))
    })
    .map_err(|why| SetError::new(why, METADATA.name()))?;
    // What was replaced (another context's map, shared), dropped with the thread's state
    // released.
    drop(replaced);
    Ok(())
}

/// Calls `f` with each entry of the metadata in `bindings` that opted into logs, in key order.
#[cfg(feature = "tracing")]
pub(crate) fn for_each_logged<'a>(
    bindings: &'a crate::map::Map,
    mut f: impl FnMut(&'a str, &'a str),
) {
    let metadata = bindings
        .get(METADATA.key())
        .map(|leaf| crate::var::downcast::<Metadata>(&leaf.value));
    if let Some(map) = metadata {
        for (key, entry) in &map.0 {
            if entry.flags.logged() {
                f(key, &entry.value);
            }
        }
    }
}
