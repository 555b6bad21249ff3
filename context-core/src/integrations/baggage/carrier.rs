//! Where baggage travels: anything that carries string pairs (HTTP headers, a message
//! broker's headers, a plain map).

use std::collections::{BTreeMap, HashMap};

use http::header::{HeaderMap, HeaderValue};

/// Something that carries string pairs, such as a message's headers: what
/// [`inject_into`](crate::baggage::inject_into) writes baggage into and
/// [`extract`](crate::baggage::extract) reads it from. The only key used is `baggage`, in
/// lowercase; other keys are never read nor written.
///
/// Implemented for `http::HeaderMap`, `HashMap<String, String>` and `BTreeMap<String,
/// String>`. For a broker client's header type, implement [`get`](Self::get) and
/// [`set`](Self::set) on a small wrapper:
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::baggage::{Carrier, extract, inject_into};
/// use contextvars::metadata::{MetadataFlags, get_metadata, set_metadata_with};
///
/// /// A broker's headers: a list of pairs, say.
/// struct Headers(Vec<(String, String)>);
///
/// impl Carrier for Headers {
///     fn get(&self, key: &str) -> Option<&str> {
///         self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
///     }
///     fn set(&mut self, key: &str, value: String) {
///         self.0.retain(|(k, _)| k != key);
///         self.0.push((key.to_string(), value));
///     }
/// }
///
/// set_metadata_with("region", "eu", MetadataFlags::BAGGAGE);
/// let mut headers = Headers(Vec::new());
/// inject_into(&mut headers);
/// assert_eq!(headers.get("baggage"), Some("region=eu"));
///
/// let mut received = extract(&headers).unwrap();
/// assert_eq!(received.run(|| get_metadata("region")).as_deref(), Some("eu"));
/// ```
pub trait Carrier {
    /// The value the carrier holds under `key`, if it has one and it is text.
    fn get(&self, key: &str) -> Option<&str>;

    /// Replaces whatever the carrier holds under `key` with `value`.
    fn set(&mut self, key: &str, value: String);

    /// Every value the carrier holds under `key`, in order: `Ok` with the text, or `Err`
    /// with the bytes of a value that is not UTF-8 text. A carrier that can hold a key more
    /// than once (HTTP headers can) implements it; the default is [`get`](Self::get)'s value.
    fn get_all(&self, key: &str) -> Vec<Result<&str, &[u8]>> {
        self.get(key).map(Ok).into_iter().collect()
    }

    /// Adds `entries` (members of a `baggage` value, joined with `,`) under `key`, keeping
    /// what is there: the default appends them to [`get`](Self::get)'s value after a comma,
    /// and [`set`](Self::set)s the result.
    fn add(&mut self, key: &str, entries: &str) {
        let value = match self.get(key) {
            Some(old) if old.trim_matches([' ', '\t']).is_empty() => format!("{old}{entries}"),
            Some(old) => format!("{old},{entries}"),
            None => entries.to_string(),
        };
        self.set(key, value);
    }
}

impl<C: Carrier + ?Sized> Carrier for &mut C {
    fn get(&self, key: &str) -> Option<&str> {
        (**self).get(key)
    }

    fn set(&mut self, key: &str, value: String) {
        (**self).set(key, value);
    }

    fn get_all(&self, key: &str) -> Vec<Result<&str, &[u8]>> {
        (**self).get_all(key)
    }

    fn add(&mut self, key: &str, entries: &str) {
        (**self).add(key, entries);
    }
}

/// An HTTP header may be given more than once: every line is read, and new entries go at
/// the end of the first line where it is text (OpenTelemetry's propagators read only the
/// first line), else on a line of their own, so that no line is ever removed or changed.
impl Carrier for HeaderMap {
    fn get(&self, key: &str) -> Option<&str> {
        HeaderMap::get(self, header_name(key).ok()?).and_then(|value| value.to_str().ok())
    }

    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (header_name(key), HeaderValue::from_str(&value)) {
            self.insert(name, value);
        }
    }

    fn get_all(&self, key: &str) -> Vec<Result<&str, &[u8]>> {
        let Ok(name) = header_name(key) else {
            return Vec::new();
        };
        HeaderMap::get_all(self, name)
            .iter()
            .map(|value| value.to_str().map_err(|_| value.as_bytes()))
            .collect()
    }

    fn add(&mut self, key: &str, entries: &str) {
        let Ok(name) = header_name(key) else {
            return;
        };
        // `entries` is visible ASCII (the writer escapes everything else).
        let Ok(own_line) = HeaderValue::from_str(entries) else {
            return;
        };
        let mut lines: Vec<HeaderValue> = HeaderMap::get_all(self, &name).iter().cloned().collect();
        let extended = lines.first().and_then(|first| {
            let text = first.to_str().ok()?;
            let comma = if text.trim_matches([' ', '\t']).is_empty() {
                ""
            } else {
                ","
            };
            let mut value = HeaderValue::from_str(&format!("{text}{comma}{entries}")).ok()?;
            value.set_sensitive(first.is_sensitive());
            Some(value)
        });
        match extended {
            Some(first) => {
                lines[0] = first;
                self.remove(&name);
                for line in lines {
                    self.append(&name, line);
                }
            }
            None => {
                self.append(name, own_line);
            }
        }
    }
}

/// `key` as a header name; `baggage` without parsing it.
fn header_name(key: &str) -> Result<http::HeaderName, http::header::InvalidHeaderName> {
    if key == "baggage" {
        Ok(super::BAGGAGE)
    } else {
        http::HeaderName::from_bytes(key.as_bytes())
    }
}

impl<S: std::hash::BuildHasher> Carrier for HashMap<String, String, S> {
    fn get(&self, key: &str) -> Option<&str> {
        HashMap::get(self, key).map(String::as_str)
    }

    fn set(&mut self, key: &str, value: String) {
        self.insert(key.to_string(), value);
    }
}

impl Carrier for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<&str> {
        BTreeMap::get(self, key).map(String::as_str)
    }

    fn set(&mut self, key: &str, value: String) {
        self.insert(key.to_string(), value);
    }
}
