//! The W3C Baggage header format: parsing (strict, with an error per bad entry) and writing.
//!
//! ```text
//! baggage     = member *( OWS "," OWS member )         at most 180 members, 8,192 bytes
//! member      = key OWS "=" OWS value *( OWS ";" OWS property )
//! property    = key OWS "=" OWS value / key
//! key         = token (RFC 9110)
//! value       = *( %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E ), percent-encoded UTF-8
//! ```

use std::borrow::Cow;
use std::sync::Arc;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

use super::error::BaggageError;

/// The most bytes a `baggage` header may hold (all its values, joined with commas).
pub const MAX_BYTES: usize = 8192;
/// The most entries a `baggage` header may hold.
pub const MAX_ENTRIES: usize = 180;

/// One well-formed entry of a received header.
pub(crate) struct Member<'a> {
    pub(crate) key: &'a str,
    /// The value as it came, trimmed, escapes and all: what a forwarded entry is written
    /// back as, so that a hop never changes what it passes on.
    pub(crate) raw: &'a str,
    /// The value, percent-decoded: borrowed from the header where it holds no escape.
    pub(crate) value: Cow<'a, str>,
    /// The properties after the value, trimmed, in header form (`a=1;b`), if any.
    pub(crate) properties: Option<Arc<str>>,
}

/// The byte classes of the grammar, one table lookup per byte.
const TCHAR: u8 = 1;
const VALUE_OCTET: u8 = 2;
/// A value octet that a written value keeps as it is (not `%`, `=` nor `+`): a value made of
/// these alone is its own decoding and is written back byte for byte.
const PLAIN_OCTET: u8 = 4;
/// Optional whitespace: a space or a tab.
const OWS: u8 = 8;
const CLASSES: [u8; 256] = {
    let mut table = [0; 256];
    let mut byte = 0;
    while byte < 256 {
        #[allow(clippy::cast_possible_truncation, reason = "below 256")]
        let b = byte as u8;
        let mut class = 0;
        if b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            )
        {
            class |= TCHAR;
        }
        if matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E) {
            class |= VALUE_OCTET;
            if !matches!(b, b'%' | b'=' | b'+') {
                class |= PLAIN_OCTET;
            }
        }
        if matches!(b, b' ' | b'\t') {
            class |= OWS;
        }
        table[byte] = class;
        byte += 1;
    }
    table
};

/// Whether `byte` may appear in an HTTP token (RFC 9110 `tchar`).
fn is_tchar(byte: u8) -> bool {
    CLASSES[usize::from(byte)] & TCHAR != 0
}

/// Whether `key` is a valid baggage key: a non-empty HTTP token.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::baggage::is_baggage_key;
///
/// assert!(is_baggage_key("tenant.id"));
/// assert!(!is_baggage_key("tenant id"));
/// assert!(!is_baggage_key(""));
/// ```
#[must_use]
pub fn is_baggage_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(is_tchar)
}

/// Whether `byte` may appear in a value as it is (`baggage-octet`).
fn is_value_octet(byte: u8) -> bool {
    CLASSES[usize::from(byte)] & VALUE_OCTET != 0
}

/// What a written value percent-encodes: everything that is not a `baggage-octet`, `%`
/// itself, and the characters other readers mishandle although W3C allows them raw: `=`
/// (OpenTelemetry's Rust propagator cuts a value at it) and `+` (Python's reads it as a
/// space). Bytes past ASCII are always encoded.
const VALUE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b',')
    .add(b';')
    .add(b'\\')
    .add(b'%')
    .add(b'=')
    .add(b'+');

/// `text` without the spaces and tabs around it (byte by byte: both are ASCII).
pub(crate) fn trim_ows(text: &str) -> &str {
    let is_ows = |b: &u8| matches!(b, b' ' | b'\t');
    let bytes = text.as_bytes();
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &text[start..end]
}

/// `text` cut at each `byte` (an ASCII delimiter), as `str::split` cuts it: a byte loop,
/// which costs less than a general searcher on the few bytes of a baggage member.
fn split_at_byte(text: &str, byte: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let text = rest?;
        if let Some((head, tail)) = split_once_at_byte(text, byte) {
            rest = Some(tail);
            Some(head)
        } else {
            rest = None;
            Some(text)
        }
    })
}

/// `text` around the first `byte` (an ASCII delimiter), as `str::split_once` cuts it.
fn split_once_at_byte(text: &str, byte: u8) -> Option<(&str, &str)> {
    let at = text.bytes().position(|b| b == byte)?;
    Some((&text[..at], &text[at + 1..]))
}

/// `text` cut to a length fit for an error message.
pub(crate) fn excerpt(text: &str) -> String {
    const MAX: usize = 64;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// What is wrong with the escapes of a value.
enum EscapeError {
    /// A `%` that does not start a two-hex-digit escape.
    Bad,
    /// Escapes that do not decode to UTF-8.
    NotUtf8,
}

/// Checks that every `%` in `raw` starts a two-hex-digit escape, and decodes it as UTF-8.
fn decode(raw: &str) -> Result<Cow<'_, str>, EscapeError> {
    let bytes = raw.as_bytes();
    // The common case: no escape, the value is its own decoding.
    let Some(first) = bytes.iter().position(|&b| b == b'%') else {
        return Ok(Cow::Borrowed(raw));
    };
    let mut i = first;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let escape = bytes.get(i + 1..i + 3);
            if !escape.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
                return Err(EscapeError::Bad);
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| EscapeError::NotUtf8)
}

/// A value, decoded, or the error that names its entry.
fn decode_value<'a>(raw: &'a str, key: &str) -> Result<Cow<'a, str>, BaggageError> {
    match decode(raw) {
        Ok(value) => Ok(value),
        Err(EscapeError::Bad) => Err(BaggageError::BadEscape {
            key: key.to_string(),
        }),
        Err(EscapeError::NotUtf8) => Err(BaggageError::NotUtf8 {
            key: key.to_string(),
        }),
    }
}

/// Checks the properties after a member's value (`text` starts after the first `;`); an
/// error names the entry by its `key`.
fn check_properties(text: &str, key: &str) -> Result<Arc<str>, BaggageError> {
    let mut out = String::with_capacity(text.len());
    for property in split_at_byte(text, b';') {
        let property = trim_ows(property);
        let (name, value) = match split_once_at_byte(property, b'=') {
            Some((name, value)) => (trim_ows(name), Some(trim_ows(value))),
            None => (property, None),
        };
        let bad = |reason| BaggageError::BadProperty {
            key: key.to_string(),
            property: excerpt(property),
            reason,
        };
        if property.is_empty() {
            return Err(bad("it is empty (a `;` with nothing after it)"));
        }
        if !is_baggage_key(name) {
            return Err(bad(
                "its name is not a token; a property is `name` or `name=value`",
            ));
        }
        if let Some(value) = value {
            if !value.bytes().all(is_value_octet) {
                return Err(bad(
                    "its value holds a character a baggage value cannot (space, quote, \
                     backslash, or one outside printable ASCII): percent-encode it",
                ));
            }
            match decode(value) {
                Ok(_) => {}
                Err(EscapeError::Bad) => {
                    return Err(bad(
                        "its value holds a `%` that does not start an escape such as `%2C`",
                    ));
                }
                Err(EscapeError::NotUtf8) => {
                    return Err(bad("its value's escapes do not decode to UTF-8 text"));
                }
            }
        }
        // Properties are passed on as they came (opaque, as OpenTelemetry treats them):
        // their values are checked for the characters a value may hold, not decoded.
        if !out.is_empty() {
            out.push(';');
        }
        out.push_str(name);
        if let Some(value) = value {
            out.push('=');
            out.push_str(value);
        }
    }
    Ok(out.into())
}

/// The common member, `key=value` with no property and no escape (whitespace around either
/// allowed), read in one pass over its bytes; `None` for anything else, which
/// [`parse_member`] then reads in full (and names the error of, where there is one).
fn simple_member(text: &str) -> Option<Member<'_>> {
    /// The index of the first byte from `i` on that is not of `class`.
    fn skip(bytes: &[u8], mut i: usize, class: impl Fn(u8) -> bool) -> usize {
        while i < bytes.len() && class(bytes[i]) {
            i += 1;
        }
        i
    }
    let bytes = text.as_bytes();
    let is_ows = |b: u8| matches!(b, b' ' | b'\t');
    let key_start = skip(bytes, 0, is_ows);
    let key_end = skip(bytes, key_start, is_tchar);
    let equals = skip(bytes, key_end, is_ows);
    if key_end == key_start || bytes.get(equals) != Some(&b'=') {
        return None;
    }
    let value_start = skip(bytes, equals + 1, is_ows);
    let value_end = skip(bytes, value_start, |b| is_value_octet(b) && b != b'%');
    if skip(bytes, value_end, is_ows) != bytes.len() {
        return None;
    }
    let value = &text[value_start..value_end];
    Some(Member {
        key: &text[key_start..key_end],
        raw: value,
        value: Cow::Borrowed(value),
        properties: None,
    })
}

/// An entry of the plainest form, `key=value` (whitespace around either allowed), whose value
/// holds no escape, no property, and nothing a write would escape: it reads as it came and is
/// written back byte for byte.
pub(crate) struct Plain<'a> {
    pub(crate) key: &'a str,
    pub(crate) value: &'a str,
}

/// The entries of a header that holds plain ones only (the usual header), read in one pass
/// over its bytes without allocating: each item is `Some` plain entry, or `None` where the
/// header is anything else (over the limits, an entry that is not plain or is malformed,
/// an empty one, a byte that is not visible ASCII), after which the iterator ends. The caller
/// then reads the header in full with [`parse`], which names the error where there is one. A
/// key given twice is not looked for here.
///
/// The header is taken as bytes, not checked as text first: each byte of a key or a value is
/// checked against the grammar's classes, which hold ASCII bytes only, so what is read is
/// text, and a header that is not text fails the check at its first byte past ASCII.
pub(crate) fn plain_entries(header: &[u8]) -> PlainEntries<'_> {
    PlainEntries {
        rest: Some(header),
        // A header over the bytes limit is no plain header: its first item says so.
        over: header.len() > MAX_BYTES,
        entries: 0,
    }
}

/// The iterator of [`plain_entries`].
pub(crate) struct PlainEntries<'a> {
    /// The header from the next entry on; `None` once done.
    rest: Option<&'a [u8]>,
    /// Whether the header is over the bytes limit.
    over: bool,
    entries: usize,
}

impl<'a> Iterator for PlainEntries<'a> {
    type Item = Option<Plain<'a>>;

    #[inline]
    fn next(&mut self) -> Option<Option<Plain<'a>>> {
        let bytes = self.rest.take()?;
        self.entries += 1;
        if self.over || self.entries > MAX_ENTRIES {
            return Some(None);
        }
        Some(plain_entry(bytes).map(|(entry, rest)| {
            self.rest = rest;
            entry
        }))
    }
}

/// The plain entry `bytes` starts with, and the bytes after the comma that ends it (`None`
/// where the header ends with it); `None` where it is not a plain entry.
#[inline]
fn plain_entry(bytes: &[u8]) -> Option<(Plain<'_>, Option<&[u8]>)> {
    let (key, rest) = run_of(skip_ows(bytes), TCHAR);
    if key.is_empty() {
        return None;
    }
    // Whitespace is looked for only where the byte that ends a run is not the one expected
    // there: most headers have none.
    let [b'=', rest @ ..] = (match rest {
        [b'=', ..] => rest,
        _ => skip_ows(rest),
    }) else {
        return None;
    };
    let (value, rest) = run_of(skip_ows(rest), PLAIN_OCTET);
    let rest = match rest {
        [] => None,
        [b',', rest @ ..] => Some(rest),
        _ => match skip_ows(rest) {
            [] => None,
            [b',', rest @ ..] => Some(rest),
            _ => return None,
        },
    };
    Some((Plain { key, value }, rest))
}

/// `bytes` without the spaces and tabs it starts with.
#[inline]
fn skip_ows(bytes: &[u8]) -> &[u8] {
    match bytes {
        [b' ' | b'\t', ..] => {
            let at = bytes
                .iter()
                .position(|&b| !matches!(b, b' ' | b'\t'))
                .unwrap_or(bytes.len());
            &bytes[at..]
        }
        _ => bytes,
    }
}

/// `bytes` cut after the run of bytes of `class` it starts with: the run, as text, and the
/// rest.
#[inline]
#[allow(unsafe_code)]
fn run_of(bytes: &[u8], class: u8) -> (&str, &[u8]) {
    let is = |b: u8| CLASSES[usize::from(b)] & class != 0;
    // Four bytes to a turn of the loop, then one: keys and values are a few bytes long.
    let mut at = 0;
    let end = loop {
        let Some(&[a, b, c, d]) = bytes.get(at..at + 4) else {
            while bytes.get(at).is_some_and(|&b| is(b)) {
                at += 1;
            }
            break at;
        };
        if !is(a) {
            break at;
        }
        if !is(b) {
            break at + 1;
        }
        if !is(c) {
            break at + 2;
        }
        if !is(d) {
            break at + 3;
        }
        at += 4;
    };
    let (run, rest) = bytes.split_at(end);
    // SAFETY: every byte of `run` was found above to have a class in `CLASSES`, and only
    // ASCII bytes have one (checked when this module compiles, below): ASCII is UTF-8.
    let run = unsafe { std::str::from_utf8_unchecked(run) };
    (run, rest)
}

// Only ASCII bytes have a class, so that a run of bytes of any class is text.
const _: () = {
    let mut byte = 0x80;
    while byte < 256 {
        assert!(CLASSES[byte] == 0, "a byte past ASCII has a class");
        byte += 1;
    }
};

/// Parses one member (`entry` is its position, from 0).
fn parse_member(text: &str, entry: usize) -> Result<Member<'_>, BaggageError> {
    match simple_member(text) {
        Some(member) => Ok(member),
        None => parse_member_in_full(text, entry),
    }
}

/// Parses one member of any form, or names what is wrong with it.
fn parse_member_in_full(text: &str, entry: usize) -> Result<Member<'_>, BaggageError> {
    let member = trim_ows(text);
    let malformed = |reason| BaggageError::Malformed {
        entry,
        text: excerpt(member),
        reason,
    };
    if member.is_empty() {
        return Err(malformed("the entry is empty"));
    }
    let (head, properties) = match split_once_at_byte(member, b';') {
        Some((head, properties)) => (head, Some(properties)),
        None => (member, None),
    };
    let Some((key, value)) = split_once_at_byte(head, b'=') else {
        return Err(malformed("the entry has no `=`"));
    };
    let (key, value) = (trim_ows(key), trim_ows(value));
    if !is_baggage_key(key) {
        return Err(malformed("the key is not a token"));
    }
    if !value.bytes().all(is_value_octet) {
        return Err(malformed(
            "the value holds a character a baggage value cannot (space, quote, backslash, or \
             one outside printable ASCII): percent-encode it",
        ));
    }
    let raw = value;
    let value = decode_value(value, key)?;
    let properties = properties
        .map(|text| check_properties(text, key))
        .transpose()?;
    Ok(Member {
        key,
        raw,
        value,
        properties,
    })
}

/// Parses a whole header value (several `baggage` headers joined with `,`).
///
/// A header over the limits is one error, `Err`; otherwise each member is parsed on its own,
/// `Ok` or its error, every one of them in the header's order: a key given more than once is
/// valid input, and the caller keeps the last good entry of each key ([`keep_last_of_each`])
/// once it has read the values, so that an entry that is bad (malformed here, or a value its
/// variable's type does not parse) is never hidden by a later entry with its key: it makes
/// the header malformed, as it would alone, and the caller refuses the header or skips the
/// entry as the application configured.
pub(crate) fn parse(header: &str) -> Result<Vec<Result<Member<'_>, BaggageError>>, BaggageError> {
    if header.len() > MAX_BYTES {
        return Err(BaggageError::TooLong {
            bytes: header.len(),
        });
    }
    // A header with nothing in it (some proxies send one) has no entries.
    if trim_ows(header).is_empty() {
        return Ok(Vec::new());
    }
    let count = header.bytes().filter(|&b| b == b',').count() + 1;
    if count > MAX_ENTRIES {
        return Err(BaggageError::TooManyEntries { entries: count });
    }
    let mut members = Vec::with_capacity(count);
    for (entry, text) in split_at_byte(header, b',').enumerate() {
        members.push(parse_member(text, entry));
    }
    Ok(members)
}

/// Leaves out of `items` every item whose key a later item has: a key given more than once
/// is read with its last value (as OpenTelemetry reads it). The items are good entries only,
/// read and checked: a bad entry never reaches here, so none is hidden. Headers are small (at
/// most 180 entries, most a handful): comparing keys pairwise costs less than hashing them,
/// and nothing is allocated unless a key is repeated.
pub(crate) fn keep_last_of_each<T, K: PartialEq>(items: &mut Vec<T>, key: impl Fn(&T) -> K) {
    let repeated = |items: &[T], i: usize| {
        let mine = key(&items[i]);
        items[i + 1..].iter().any(|later| key(later) == mine)
    };
    if (0..items.len()).any(|i| repeated(items, i)) {
        let keep: Vec<bool> = (0..items.len()).map(|i| !repeated(items, i)).collect();
        let mut keep = keep.into_iter();
        items.retain(|_| keep.next().unwrap_or(true));
    }
}

/// Appends `key=value` (the value percent-encoded) and its properties to `out`.
pub(crate) fn write_member(out: &mut String, key: &str, value: &str, properties: Option<&str>) {
    out.push_str(key);
    out.push('=');
    out.extend(utf8_percent_encode(value, VALUE));
    if let Some(properties) = properties {
        out.push(';');
        out.push_str(properties);
    }
}

/// Whether writing `value` gives `raw`, byte for byte.
pub(crate) fn writes_as(value: &str, raw: &str) -> bool {
    // The common case, without encoding: a received value with no escape is its own
    // decoding, and is written back as it is unless it holds what the writer escapes
    // although a reader allows it raw.
    if !raw.bytes().any(|b| matches!(b, b'%' | b'=' | b'+')) {
        return value == raw;
    }
    let mut rest = raw;
    for chunk in utf8_percent_encode(value, VALUE) {
        match rest.strip_prefix(chunk) {
            Some(after) => rest = after,
            None => return false,
        }
    }
    rest.is_empty()
}

/// Appends `key=raw` (the value as it was received, escapes untouched) and its properties.
pub(crate) fn write_raw(out: &mut String, key: &str, raw: &str, properties: Option<&str>) {
    out.push_str(key);
    out.push('=');
    out.push_str(raw);
    if let Some(properties) = properties {
        out.push(';');
        out.push_str(properties);
    }
}

/// The key of a member as written in a header, for merging: the text before `=` (or `;`).
pub(crate) fn member_key(member: &str) -> &str {
    let end = member.find(['=', ';']).unwrap_or(member.len());
    trim_ows(&member[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(header: &str) -> Vec<(String, String, Option<String>)> {
        parse(header)
            .unwrap()
            .into_iter()
            .map(|m| {
                let m = m.unwrap_or_else(|e| panic!("{header:?}: {e}"));
                (
                    m.key.to_string(),
                    m.value.into_owned(),
                    m.properties.map(|p| p.to_string()),
                )
            })
            .collect()
    }

    fn err(header: &str) -> BaggageError {
        match parse(header) {
            Err(e) => e,
            Ok(members) => members
                .into_iter()
                .find_map(Result::err)
                .unwrap_or_else(|| panic!("{header:?} parsed")),
        }
    }

    #[test]
    fn reads_keys_values_whitespace_and_properties() {
        assert_eq!(
            ok(" a = 1 ,b=x%20y%2C%3B;p1 ; p2 = v ,\tc=%E2%9C%93"),
            [
                ("a".into(), "1".into(), None),
                ("b".into(), "x y,;".into(), Some("p1;p2=v".into())),
                ("c".into(), "✓".into(), None),
            ]
        );
        assert_eq!(ok("empty="), [("empty".into(), String::new(), None)]);
        assert!(ok(" \t").is_empty());
    }

    #[test]
    fn rejects_each_kind_of_bad_entry() {
        assert!(matches!(
            err("a=1,,b=2"),
            BaggageError::Malformed { entry: 1, .. }
        ));
        assert!(matches!(err("a"), BaggageError::Malformed { entry: 0, .. }));
        assert!(matches!(err("a b=1"), BaggageError::Malformed { .. }));
        assert!(matches!(err("a=\"q\""), BaggageError::Malformed { .. }));
        assert!(matches!(err("a=1;=x"), BaggageError::BadProperty { key, .. } if key == "a"));
        assert!(matches!(err("a=1;"), BaggageError::BadProperty { key, .. } if key == "a"));
        assert!(matches!(err("a=1;p=%zz"), BaggageError::BadProperty { key, .. } if key == "a"));
        assert!(matches!(err("a=1;p=%FF"), BaggageError::BadProperty { key, .. } if key == "a"));
        assert!(matches!(err("a=%zz"), BaggageError::BadEscape { .. }));
        assert!(matches!(err("a=%4"), BaggageError::BadEscape { .. }));
        assert!(matches!(err("a=%FF%FE"), BaggageError::NotUtf8 { .. }));
        // The last entry of a key wins, bad or not; the earlier ones are left out.
        assert!(matches!(err("a=1,b=2,a=%zz"), BaggageError::BadEscape { key } if key == "a"));
    }

    #[test]
    fn a_repeated_key_is_read_once_with_its_last_value() {
        let mut members = ok("a=1,b=2,a=3;p");
        assert_eq!(members.len(), 3, "every entry is parsed and kept");
        keep_last_of_each(&mut members, |(key, _, _)| key.clone());
        assert_eq!(
            members,
            [
                ("b".into(), "2".into(), None),
                ("a".into(), "3".into(), Some("p".into())),
            ]
        );
        // A bad entry stays, whatever follows: the header is malformed, as with it alone.
        for header in ["a=%zz,a=ok", "a=ok,a=%zz"] {
            let members = parse(header).unwrap();
            assert_eq!(members.len(), 2, "{header}");
            assert_eq!(members.iter().filter(|m| m.is_err()).count(), 1, "{header}");
        }
    }

    #[test]
    fn enforces_the_limits_exactly() {
        let entries = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let at_limit = entries(MAX_ENTRIES);
        assert_eq!(parse(&at_limit).unwrap().len(), MAX_ENTRIES);
        let over = entries(MAX_ENTRIES + 1);
        assert!(matches!(
            parse(&over),
            Err(BaggageError::TooManyEntries { entries: 181 })
        ));
        let long = format!("k={}", "v".repeat(MAX_BYTES - 2));
        assert_eq!(long.len(), MAX_BYTES);
        assert!(parse(&long).is_ok());
        let longer = format!("{long}v");
        assert!(matches!(
            parse(&longer),
            Err(BaggageError::TooLong { bytes: 8193 })
        ));
    }

    #[test]
    fn written_values_read_back_unchanged() {
        for value in [
            "plain", "a b", "x,y;z", "100%", "\"q\"\\", "é✓", "", "==", "a+b", " x ",
        ] {
            let mut out = String::new();
            write_member(&mut out, "k", value, None);
            assert_eq!(ok(&out), [("k".into(), value.into(), None)], "{out}");
            let raw = out.strip_prefix("k=").unwrap();
            assert!(writes_as(value, raw), "{out}");
            // Nothing another reader mishandles is left raw.
            assert!(
                raw.bytes()
                    .all(|b| is_value_octet(b) && !b"=+\\".contains(&b)),
                "{out}"
            );
            assert!(decode(raw).is_ok(), "{out}");
        }
        assert!(!writes_as("a=b", "a=b"));
        assert!(!writes_as("=", "%3d"));
    }

    #[test]
    fn the_one_pass_reading_agrees_with_the_full_one() {
        // What the one-pass reading takes, it reads as the full reading does; what it
        // leaves (properties, escapes, anything malformed) goes to the full reading.
        for text in [
            "a=1",
            " a = 1 ",
            "\ta\t=\t1\t",
            "empty=",
            "a==b",
            "k.e-y_!=v:/?",
            "a= ",
            " =1",
            "a b=1",
            "a=1 2",
            "a=1;p",
            "a=%20",
            "a=\"q\"",
            "a",
            "",
            "a=\\",
            "é=1",
            "a=é",
        ] {
            let full = parse_member_in_full(text, 0);
            match simple_member(text) {
                Some(member) => {
                    let full = full.unwrap_or_else(|e| panic!("{text:?}: {e}"));
                    assert_eq!(
                        (member.key, member.raw, &*member.value),
                        (full.key, full.raw, &*full.value),
                        "{text:?}"
                    );
                    assert!(full.properties.is_none(), "{text:?}");
                }
                None => assert!(
                    full.is_err() || text.contains([';', '%']),
                    "{text:?} is a simple member the one-pass reading missed"
                ),
            }
        }
    }

    #[test]
    fn the_one_pass_reading_gives_way_over_the_limits() {
        let over = vec!["k=v"; MAX_ENTRIES + 1].join(",");
        assert!(plain_entries(over.as_bytes()).any(|entry| entry.is_none()));
        let at_limit = vec!["k=v"; MAX_ENTRIES].join(",");
        assert!(plain_entries(at_limit.as_bytes()).all(|entry| entry.is_some()));
        let at_limit = format!("k={}", "v".repeat(MAX_BYTES - 2));
        assert!(plain_entries(at_limit.as_bytes()).all(|entry| entry.is_some()));
        let long = format!("k={}", "v".repeat(MAX_BYTES - 1));
        assert!(plain_entries(long.as_bytes()).any(|entry| entry.is_none()));
    }

    /// What the one-pass reading gives for `header`: its entries, or `None` where it gives way.
    fn one_pass(header: &[u8]) -> Option<Vec<(&str, &str)>> {
        plain_entries(header)
            .map(|entry| entry.map(|e| (e.key, e.value)))
            .collect()
    }

    /// What the one-pass reading must give for `header`, as the full reading sees it: its
    /// entries where the header is text within the limits and each entry is plain (well
    /// formed, no property, no escape, nothing a write would escape), else `None`.
    fn plain_by_the_full_reading(header: &[u8]) -> Option<Vec<(&str, &str)>> {
        let header = std::str::from_utf8(header).ok()?;
        if header.len() > MAX_BYTES || header.split(',').count() > MAX_ENTRIES {
            return None;
        }
        header
            .split(',')
            .map(|text| {
                let member = parse_member_in_full(text, 0).ok()?;
                let plain = member.properties.is_none()
                    && !member.raw.contains('%')
                    && writes_as(&member.value, member.raw);
                plain.then_some((member.key, member.raw))
            })
            .collect()
    }

    #[track_caller]
    fn reads_as_the_full_reading(header: &[u8]) {
        assert_eq!(
            one_pass(header),
            plain_by_the_full_reading(header),
            "{:?}",
            String::from_utf8_lossy(header)
        );
    }

    #[test]
    fn the_one_pass_reading_takes_exactly_the_plain_headers() {
        for header in [
            "a=1",
            "tenant=acme,user.id=4711,source=mobile",
            " a = 1 ,\tb=x ",
            "a =1,b= 2 , c = 3",
            "k.e-y_!=v:/?,empty=",
            "a=1,a=2",
            "a=1,",
            ",a=1",
            "a=1,,b=2",
            "a=1, ,b=2",
            "",
            " ",
            "a=1;p",
            "a=1 ;p=2",
            "a=%20",
            "a=%",
            "a==b",
            "a=b+c",
            "a=1 2",
            "a b=1",
            "a=\"q\"",
            "a=\\",
            "=1",
            "a",
            "a=1=",
            "é=1",
            "a=é",
            "a=1,é=2",
        ] {
            reads_as_the_full_reading(header.as_bytes());
        }
        // Bytes that are not text, anywhere.
        for header in [
            &b"a=\xff"[..],
            b"\xff=1",
            b"a=1,b=\xc3",
            b"a=\xc3\xa9",
            b"a=1\x00",
        ] {
            reads_as_the_full_reading(header);
        }
    }

    #[test]
    fn every_byte_is_classed_as_the_full_reading_classes_it() {
        // Each byte in a key, in a value, and around them, at every place of the loop that
        // reads four bytes to a turn, then one (under Miri, which interprets every step, at
        // the first place of a turn and at the second of the next).
        let lengths: &[usize] = if cfg!(miri) {
            &[0, 5]
        } else {
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
        };
        for byte in 0..=u8::MAX {
            for &len in lengths {
                let run = vec![b'k'; len];
                let with = |head: &[u8], tail: &[u8]| [head, &run, &[byte], &run, tail].concat();
                reads_as_the_full_reading(&with(b"", b"=v,b=2"));
                reads_as_the_full_reading(&with(b"a=", b",b=2"));
                reads_as_the_full_reading(&with(b"a=", b""));
                reads_as_the_full_reading(&with(b"a=1,", b"=2"));
            }
            reads_as_the_full_reading(&[byte]);
            reads_as_the_full_reading(&[b'a', b'=', byte]);
            reads_as_the_full_reading(&[byte, b'a', b'=', b'1', byte]);
        }
    }

    #[test]
    fn keys_and_values_of_every_length_are_read_whole() {
        let text = "abcdefghijklmnopqrstu";
        // Under Miri, which interprets every step, the lengths around each turn of the loop.
        let lengths: Vec<usize> = if cfg!(miri) {
            vec![0, 1, 3, 4, 5, 8, 9, 20]
        } else {
            (0..=20).collect()
        };
        for len in lengths {
            let (key, value) = (&text[..len.max(1)], &text[..len]);
            for header in [
                format!("{key}={value}"),
                format!("{key}={value},b=2"),
                format!("b=2,{key}={value}"),
                format!(" {key} = {value} ,b=2"),
                format!("{key}\t=\t{value}\t"),
            ] {
                reads_as_the_full_reading(header.as_bytes());
                let entries = one_pass(header.as_bytes()).expect("a plain header");
                assert!(entries.contains(&(key, value)), "{header:?}");
            }
            // A bad byte at each place of the key or the value: the header is not plain.
            for at in 0..len {
                for bad in [b' ', b'"', b'%', b';', b'=', b',', b'\\', 0x7f, 0x80, 0] {
                    let mut header = format!("{key}={value}").into_bytes();
                    let mut in_key = header.clone();
                    in_key[at] = bad;
                    header[len.max(1) + 1 + at] = bad;
                    reads_as_the_full_reading(&header);
                    reads_as_the_full_reading(&in_key);
                }
            }
        }
    }

    #[test]
    fn many_entries_are_read_up_to_the_limits() {
        for count in [1, 2, 7, 8, 9, 16, 17, 40, MAX_ENTRIES] {
            let header: Vec<String> = (0..count).map(|i| format!("k{i}=v{i}")).collect();
            let header = header.join(",");
            let entries = one_pass(header.as_bytes()).expect("a plain header");
            assert_eq!(entries.len(), count);
            assert_eq!(
                entries[count - 1],
                (&*format!("k{}", count - 1), &*format!("v{}", count - 1))
            );
        }
    }

    #[test]
    fn generated_headers_read_as_the_full_reading_reads_them() {
        // Headers put together from pieces of every kind, in a fixed pseudo-random order.
        const PIECES: &[&str] = &[
            "a", "k.e-y", "tenant", "user.id", "x_1!", "=", "==", "1", "acme", "4711", ",", ",",
            ", ", " ,", " ", "\t", ";", ";p", ";p=1", "%20", "%", "%zz", "+", "\"", "\\", "é", "/",
            ":", "?", "#", "~",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // Miri interprets every step: a few hundred headers still meet every piece.
        let headers = if cfg!(miri) { 300 } else { 50_000 };
        for _ in 0..headers {
            let pieces = 1 + next() % 12;
            let mut header = String::new();
            for _ in 0..pieces {
                let at = usize::try_from(next() % PIECES.len() as u64).unwrap();
                header.push_str(PIECES[at]);
            }
            reads_as_the_full_reading(header.as_bytes());
        }
    }

    #[test]
    fn member_keys_are_read_for_merging() {
        assert_eq!(member_key(" tenant = acme;p"), "tenant");
        assert_eq!(member_key("flag;p"), "flag");
    }
}
