//! What can be wrong with a received `baggage` header.

use std::error::Error;
use std::fmt::{self, Write as _};

use super::header::{MAX_BYTES, MAX_ENTRIES};

/// Why a received `baggage` header, or one of its entries, was refused.
///
/// With the default policy of [`ContextLayer::accept_baggage`](crate::tower::ContextLayer::accept_baggage),
/// the first of these answers the request with a `400 Bad Request` whose JSON body is
/// [`to_json`](Self::to_json); with
/// [`ignore_bad_entries`](crate::baggage::AcceptBaggageLayer::ignore_bad_entries), each is
/// handed to your callback and the entry is skipped.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::baggage::BaggageError;
///
/// let err = BaggageError::BadEscape { key: "tenant".into() };
/// assert_eq!(err.key(), Some("tenant"));
/// assert!(err.to_string().contains("`tenant`"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BaggageError {
    /// The header (all `baggage` headers, joined) is longer than 8,192 bytes.
    TooLong {
        /// Its length.
        bytes: usize,
    },
    /// The header has more than 180 entries.
    TooManyEntries {
        /// How many it has.
        entries: usize,
    },
    /// The header is not text: it holds bytes outside visible ASCII.
    NotText,
    /// An entry is not `key=value` followed by `;property` items.
    Malformed {
        /// The entry's position in the header, from 0.
        entry: usize,
        /// The entry (cut short if long).
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A value holds a `%` that does not start a two-digit hexadecimal escape.
    BadEscape {
        /// The entry's key.
        key: String,
    },
    /// A value's percent-escapes do not decode to UTF-8.
    NotUtf8 {
        /// The entry's key.
        key: String,
    },
    /// A property after an entry's value (`;name` or `;name=value`) is malformed, or its
    /// value's escapes are bad as a value's would be.
    BadProperty {
        /// The entry's key.
        key: String,
        /// The property (cut short if long).
        property: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A value does not parse into the type of the variable that claims its key.
    BadValue {
        /// The entry's key.
        key: String,
        /// The variable's name.
        var: &'static str,
        /// The value (cut short if long).
        value: String,
        /// The parse error.
        reason: String,
    },
}

impl BaggageError {
    /// What names the offending entry: its key, or, for an entry too malformed to have one
    /// ([`Malformed`](Self::Malformed)), its text (cut short if long). `None` for the header
    /// as a whole (too long, too many entries, not text).
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::baggage::BaggageError;
    ///
    /// assert_eq!(BaggageError::NotUtf8 { key: "user".into() }.key(), Some("user"));
    /// assert_eq!(BaggageError::TooLong { bytes: 9000 }.key(), None);
    /// ```
    #[must_use]
    pub fn key(&self) -> Option<&str> {
        match self {
            BaggageError::Malformed { text, .. } => Some(text),
            other => other.entry_key(),
        }
    }

    /// The key of the offending entry, where it has one.
    pub(crate) fn entry_key(&self) -> Option<&str> {
        match self {
            BaggageError::BadEscape { key }
            | BaggageError::BadProperty { key, .. }
            | BaggageError::NotUtf8 { key }
            | BaggageError::BadValue { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The body of the `400 Bad Request` answer: `{"error": "<this error>", "entry":
    /// "<the key, or the entry's text>"}` (`entry` is `null` for the header as a whole).
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::baggage::BaggageError;
    ///
    /// let json = BaggageError::NotUtf8 { key: "user".into() }.to_json();
    /// assert!(json.starts_with(r#"{"error":"bad baggage header: the value of `user`"#), "{json}");
    /// assert!(json.ends_with(r#","entry":"user"}"#), "{json}");
    /// ```
    #[must_use]
    pub fn to_json(&self) -> String {
        let mut out = String::from("{\"error\":");
        json_string(&mut out, &self.to_string());
        out.push_str(",\"entry\":");
        match self.key() {
            Some(entry) => json_string(&mut out, entry),
            None => out.push_str("null"),
        }
        out.push('}');
        out
    }
}

fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl fmt::Display for BaggageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bad baggage header: ")?;
        match self {
            BaggageError::TooLong { bytes } => write!(
                f,
                "it is {bytes} bytes long; the most a `baggage` header may hold is {MAX_BYTES}"
            ),
            BaggageError::TooManyEntries { entries } => write!(
                f,
                "it has {entries} entries; the most a `baggage` header may hold is {MAX_ENTRIES}"
            ),
            BaggageError::NotText => {
                f.write_str("it holds bytes outside visible ASCII; values must be percent-encoded")
            }
            BaggageError::Malformed {
                entry,
                text,
                reason,
            } => write!(f, "entry {entry} (`{text}`): {reason}"),
            BaggageError::BadProperty {
                key,
                property,
                reason,
            } => write!(
                f,
                "the property `{property}` of the entry `{key}`: {reason}"
            ),
            BaggageError::BadEscape { key } => write!(
                f,
                "the value of `{key}` holds a `%` that does not start an escape such as `%2C`"
            ),
            BaggageError::NotUtf8 { key } => {
                write!(f, "the value of `{key}` does not decode to UTF-8 text")
            }
            BaggageError::BadValue {
                key,
                var,
                value,
                reason,
            } => write!(
                f,
                "the value of `{key}` (`{value}`) is not a valid value of `{var}`: {reason}"
            ),
        }
    }
}

impl Error for BaggageError {}
