//! Context variables on every log line (feature `tracing`).
//!
//! [`ContextFields`] wraps one of tracing-subscriber's event formatters (text or JSON) and
//! adds, to every event it writes, the context variables **that opted into logs**
//! ([`Key::LOG`](crate::Key::LOG)) as they are in the context the event is emitted from, and
//! the metadata entries that did. Text lines get `name=value` after the event's own fields;
//! JSON lines one more member, [`JSON_KEY`], an object of the variables. A line never has a
//! key twice: variables whose name is shared on the line are written as `name@path`
//! ([`Key::path`](crate::Key::path)), in the order of their keys, on text lines a character
//! a `key=value` reader splits at is written as `_`, and a key still taken gets `#2`, `#3`,
//! …. [`SpanContextLayer`] makes the lines about a span itself carry the context the span was
//! created in; [`for_each_logged`] is the building block for other integrations.
//!
//! The `contextvars` crate's documentation of this module tells the whole story with its
//! macros (the formats, names that collide, spans, why a formatter wrapper); the items here
//! are the runtime part.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use tracing_core::span::{Attributes, Id};
use tracing_core::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::Context as LayerContext;
use tracing_subscriber::registry::LookupSpan;

use crate::context::{Context, ValueRef};
use crate::current;
use crate::map::{Leaf, Map};

/// An event formatter that writes what `inner` writes, plus the context variables that opted
/// into logs. The docs of the `contextvars::tracing` module explain how.
///
/// Use it with [`fmt().event_format(…)`][event_format]
/// or a layer's [`map_event_format`][map_event_format]:
///
/// [event_format]: https://docs.rs/tracing-subscriber/0.3/tracing_subscriber/fmt/struct.SubscriberBuilder.html#method.event_format
/// [map_event_format]: https://docs.rs/tracing-subscriber/0.3/tracing_subscriber/fmt/struct.Layer.html#method.map_event_format
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::tracing::ContextFields;
/// use tracing_subscriber::fmt;
/// use tracing_subscriber::prelude::*;
///
/// let subscriber = tracing_subscriber::registry()
///     .with(fmt::layer().map_event_format(ContextFields::text))
///     .with(fmt::layer().json().map_event_format(ContextFields::json).with_writer(std::io::sink));
/// # let _ = subscriber;
/// ```
#[derive(Debug, Clone)]
pub struct ContextFields<F> {
    inner: F,
    style: Style,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Text,
    Json,
}

impl<F> ContextFields<F> {
    /// For a text format (`format()`, `.compact()`, `.pretty()`, or your own): appends
    /// `name=value` for each variable, before the line's end (with `.pretty()`, which writes
    /// an event over several lines, at the end of its last line).
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::tracing::ContextFields;
    /// use tracing_subscriber::fmt::format;
    ///
    /// let subscriber = tracing_subscriber::fmt()
    ///     .event_format(ContextFields::text(format().compact()))
    ///     .finish();
    /// # let _ = subscriber;
    /// ```
    pub fn text(inner: F) -> Self {
        ContextFields {
            inner,
            style: Style::Text,
        }
    }

    /// For a format that writes one JSON object per line (`format().json()`): adds a
    /// [`JSON_KEY`] member holding the variables (see [`JSON_KEY`] for why that name).
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::tracing::ContextFields;
    /// use tracing_subscriber::fmt::format;
    ///
    /// let subscriber = tracing_subscriber::fmt()
    ///     .event_format(ContextFields::json(format().json().flatten_event(true)))
    ///     .finish();
    /// # let _ = subscriber;
    /// ```
    pub fn json(inner: F) -> Self {
        ContextFields {
            inner,
            style: Style::Json,
        }
    }

    /// The wrapped formatter.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::tracing::ContextFields;
    ///
    /// assert_eq!(*ContextFields::text(7).get_ref(), 7);
    /// ```
    #[must_use]
    pub fn get_ref(&self) -> &F {
        &self.inner
    }
}

/// The member of a JSON line that holds the context variables: a name no field named with an
/// identifier can have, so that it never collides with an event's own fields, even with
/// `flatten_event(true)`. Only a field named with that exact string literal
/// (`"@contextvars" = …`) could; the member then takes one more `@` (`"@@contextvars"`, and so
/// on until the key is free), so that no field is lost.
///
/// ```
/// # use context_core as contextvars;
/// assert_eq!(contextvars::tracing::JSON_KEY, "@contextvars");
/// ```
pub const JSON_KEY: &str = "@contextvars";

/// A line buffer larger than this is not kept for the next event.
const MAX_KEPT_LINE: usize = 64 * 1024;

thread_local! {
    /// The line being formatted, reused from one event to the next on each thread.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

impl<S, N, F> FormatEvent<S, N> for ContextFields<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    /// Writes the line the inner formatter writes, with the logged variables of the current
    /// context added before its end.
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let bindings = Bindings::of(ctx, event);
        let line = LINE.try_with(|line| {
            line.try_borrow_mut()
                .map(|mut line| std::mem::take(&mut *line))
        });
        // A `Debug` impl that logs while its value is being written gets a fresh buffer.
        let mut line = match line {
            Ok(Ok(line)) => line,
            _ => String::new(),
        };
        line.clear();
        let result = self
            .inner
            .format_event(ctx, Writer::new(&mut line), event)
            .and_then(|()| match self.style {
                Style::Text => {
                    // The event's own fields are on the line already: their names are taken.
                    let taken: Vec<&str> = event.fields().map(|field| field.name()).collect();
                    write_text(&mut writer, &line, &bindings.fields(&taken, text_key))
                }
                Style::Json => write_json(
                    &mut writer,
                    &line,
                    &bindings.fields(&[], std::convert::identity),
                ),
            });
        if line.capacity() > MAX_KEPT_LINE {
            line = String::new();
        }
        let _ = LINE.try_with(|cell| {
            if let Ok(mut cell) = cell.try_borrow_mut() {
                *cell = line;
            }
        });
        result
    }
}

/// The bindings a line carries: those of the context current where the event is written, or,
/// for a line about a span itself, of the context the span was created in.
struct Bindings {
    map: Map,
    // Declared after `map`, so dropped after it: the values are still held by the context
    // when the line's copy of the map lets go of them.
    _span_context: Option<Context>,
}

impl Bindings {
    fn of<S, N>(ctx: &FmtContext<'_, S, N>, event: &Event<'_>) -> Bindings
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'w> FormatFields<'w> + 'static,
    {
        match span_context(ctx, event) {
            Some(mut context) => Bindings {
                map: context.run(current::snapshot),
                _span_context: Some(context),
            },
            None => Bindings {
                map: current::snapshot(),
                _span_context: None,
            },
        }
    }

    /// The variables that opted into logs and the metadata entries that did, each with the
    /// key it is written under on this line, where `taken` are the keys the line has already,
    /// by the rules the `contextvars` crate's docs of this module give. `spell` makes a key
    /// what the format can write ([`text_key`] for text lines), before keys still taken are
    /// numbered, so that what is written is what is told apart.
    fn fields<'a>(
        &'a self,
        taken: &[&str],
        spell: fn(Cow<'a, str>) -> Cow<'a, str>,
    ) -> Vec<(Cow<'a, str>, Field<'a>)> {
        let vars: Vec<&Leaf> = self.map.iter().filter(|leaf| leaf.var.log()).collect();
        let mut fields: Vec<(Cow<'_, str>, Field<'_>)> = Vec::with_capacity(vars.len());
        for leaf in &vars {
            let name = leaf.var.name();
            let shared = taken.contains(&name)
                || vars
                    .iter()
                    .any(|other| other.key != leaf.key && other.var.name() == name);
            let key = if shared {
                Cow::Owned(format!("{name}@{}", leaf.var.path()))
            } else {
                Cow::Borrowed(name)
            };
            fields.push((spell(key), Field::Var(leaf)));
        }
        // Variables in a fixed order (by key, then where they are declared: two names may be
        // spelled alike on a text line), so that the numbered keys below are too.
        fields.sort_by(|(a, field_a), (b, field_b)| {
            a.cmp(b)
                .then_with(|| field_path(field_a).cmp(field_path(field_b)))
        });
        crate::metadata::for_each_logged(&self.map, |key, value| {
            fields.push((spell(Cow::Borrowed(key)), Field::Metadata(value)));
        });
        // Whatever is still taken (metadata named like a variable, two copies of one crate)
        // takes the first free `#2`, `#3`, ….
        let fields_len = fields.len();
        for i in 0..fields_len {
            let (earlier, rest) = fields.split_at_mut(i);
            let key = &mut rest[0].0;
            let is_free = |candidate: &str| {
                !taken.contains(&candidate) && earlier.iter().all(|(k, _)| k != candidate)
            };
            if !is_free(key) {
                // At most `fields.len() + taken.len()` keys are taken, so one of as many
                // more numbers is free.
                let free = (2..=fields_len + taken.len() + 2)
                    .map(|n| format!("{key}#{n}"))
                    .find(|candidate| is_free(candidate))
                    .unwrap_or_default();
                *key = Cow::Owned(free);
            }
        }
        fields
    }
}

/// `key` as a text line writes it: a `key=value` reader (logfmt) splits a key at whitespace,
/// `=` and `"`, so each of those and each control character is written as `_`, and an empty key
/// as `_`. Keys are then numbered as for any other collision, so a line never has a key twice
/// however the names are spelled.
fn text_key(key: Cow<'_, str>) -> Cow<'_, str> {
    fn splits(c: char) -> bool {
        c.is_whitespace() || c.is_control() || c == '=' || c == '"'
    }
    if key.is_empty() {
        Cow::Borrowed("_")
    } else if key.contains(splits) {
        Cow::Owned(key.replace(splits, "_"))
    } else {
        key
    }
}

/// Where a variable's field is declared; nothing for a metadata entry's.
fn field_path(field: &Field<'_>) -> &'static str {
    match field {
        Field::Var(leaf) => leaf.var.path(),
        Field::Metadata(_) => "",
    }
}

/// What a line writes after a key.
enum Field<'a> {
    /// A variable's value.
    Var(&'a Leaf),
    /// A metadata entry's value.
    Metadata(&'a str),
}

impl fmt::Debug for Field<'_> {
    /// The value as text lines write it: a variable's `Debug` output, an entry's quoted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Var(leaf) => leaf.var.fmt_value(leaf.value.as_any(), f),
            Field::Metadata(value) => fmt::Debug::fmt(value, f),
        }
    }
}

/// For a line about a span itself (`new`, `enter`, `exit`, `close`), the context the span
/// was created in, if a [`SpanContextLayer`] recorded it.
fn span_context<S, N>(ctx: &FmtContext<'_, S, N>, event: &Event<'_>) -> Option<Context>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    if !event.metadata().is_span() {
        return None;
    }
    let span = ctx.span(event.parent()?)?;
    let extensions = span.extensions();
    extensions
        .get::<CreatedIn>()
        .map(|CreatedIn(context)| context.clone())
}

/// The context a span was created in, in the span's extensions.
struct CreatedIn(Context);

/// A tracing-subscriber layer that records, for every span, a snapshot of the context it is
/// created in, so that the lines [`ContextFields`] writes about the span itself (`new`,
/// `enter`, `exit`, `close`, with `with_span_events`) carry that context's variables, not
/// those of whatever code enters, exits or drops the span.
///
/// A snapshot costs a reference count; the span keeps the context's values alive until it
/// closes. Events inside the span are not affected: each carries the context it is emitted
/// in.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::tracing::{ContextFields, SpanContextLayer};
/// use tracing_subscriber::fmt::{self, format::FmtSpan};
/// use tracing_subscriber::prelude::*;
///
/// let subscriber = tracing_subscriber::registry().with(SpanContextLayer).with(
///     fmt::layer()
///         .json()
///         .with_span_events(FmtSpan::CLOSE)
///         .map_event_format(ContextFields::json),
/// );
/// # let _ = subscriber;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanContextLayer;

impl<S> Layer<S> for SpanContextLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, _: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().replace(CreatedIn(Context::current()));
        }
    }
}

/// Calls `f` with the name and value of each variable in the current context that opted
/// into logs ([`Key::LOG`](crate::Key::LOG)): the building block for another log or trace
/// integration (an OpenTelemetry exporter, a custom formatter).
///
/// Names need not be unique, so `f` may see one twice: an integration that writes them as
/// keys must tell them apart itself (this module's formatters write each variable whose name
/// is shared on the line as `name@path`, with [`Key::path`](crate::Key::path)).
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::tracing::for_each_logged;
/// # use contextvars::{ContextVar, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct TENANT {}
/// # impl Key for TENANT { type Value = &'static str; type Default = NoDefault; const LOG: bool = true;
/// #   fn fmt_value(v: &&'static str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { std::fmt::Debug::fmt(v, f) } }
/// # static TENANT: ContextVar<TENANT> = ContextVar::new("tenant");
/// # #[allow(non_camel_case_types)] struct PASSWORD {}
/// # impl Key for PASSWORD { type Value = &'static str; type Default = NoDefault; }
/// # static PASSWORD: ContextVar<PASSWORD> = ContextVar::new("password");
///
/// let _tenant = TENANT.set("acme"); // declared with `#[context_var(log)]`
/// let _password = PASSWORD.set("hunter2"); // declared without
/// let mut fields = Vec::new();
/// for_each_logged(|name, value| fields.push(format!("{name}={value:?}")));
/// assert_eq!(fields, ["tenant=\"acme\""]);
/// ```
pub fn for_each_logged(mut f: impl FnMut(&'static str, ValueRef<'_>)) {
    let context = Context::current();
    for (name, value) in context.iter().filter(|(_, value)| value.is_logged()) {
        f(name, value);
    }
}

/// Splits a formatted line into its text and its line end.
fn split_line_end(line: &str) -> (&str, &str) {
    let body = line.trim_end_matches(['\n', '\r']);
    (body, &line[body.len()..])
}

fn write_text(
    writer: &mut Writer<'_>,
    line: &str,
    fields: &[(Cow<'_, str>, Field<'_>)],
) -> fmt::Result {
    let (body, end) = split_line_end(line);
    writer.write_str(body)?;
    for (key, value) in fields {
        write!(writer, " {key}={value:?}")?;
    }
    writer.write_str(end)
}

fn write_json(
    writer: &mut Writer<'_>,
    line: &str,
    fields: &[(Cow<'_, str>, Field<'_>)],
) -> fmt::Result {
    let (body, end) = split_line_end(line);
    let Some(open) = body.strip_suffix('}').filter(|_| body.starts_with('{')) else {
        // Not a JSON object: write the line as it is, and the fields as text.
        return write_text(writer, line, fields);
    };
    writer.write_str(open)?;
    if !fields.is_empty() {
        if !open.trim_end().ends_with('{') {
            writer.write_char(',')?;
        }
        let mut ats = 0;
        while has_top_level_key(open, ats, JSON_KEY) {
            ats += 1;
        }
        writer.write_char('"')?;
        for _ in 0..ats {
            writer.write_char('@')?;
        }
        writer.write_str(JSON_KEY)?;
        writer.write_str("\":{")?;
        for (i, (key, value)) in fields.iter().enumerate() {
            if i > 0 {
                writer.write_char(',')?;
            }
            write_json_string(writer, key)?;
            writer.write_char(':')?;
            match value {
                Field::Var(leaf) => write_json_value(writer, leaf)?,
                Field::Metadata(value) => write_json_string(writer, value)?,
            }
        }
        writer.write_char('}')?;
    }
    writer.write_char('}')?;
    writer.write_str(end)
}

/// Whether the JSON object `object` (its closing brace cut off) has a member named `ats`
/// times `@` followed by `key`, as written (the keys compared need no escapes).
fn has_top_level_key(object: &str, ats: usize, key: &str) -> bool {
    let bytes = object.as_bytes();
    let mut depth = 0_usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                let end = i.min(bytes.len());
                let is_key = object
                    .get(end + 1..)
                    .is_some_and(|rest| rest.trim_start().starts_with(':'));
                if depth == 1 && is_key {
                    let name = &object[start..end];
                    let (prefix, rest) = name.split_at(ats.min(name.len()));
                    if prefix.len() == ats && prefix.bytes().all(|b| b == b'@') && rest == key {
                        return true;
                    }
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

/// Writes a bound value as JSON: a number, a boolean or a string where the type says what
/// it is, else the string of its `Debug` output.
fn write_json_value(writer: &mut Writer<'_>, leaf: &Leaf) -> fmt::Result {
    let value = leaf.value.as_any();
    macro_rules! as_number {
        ($($ty:ty),*) => {$(
            if let Some(number) = value.downcast_ref::<$ty>() {
                return write!(writer, "{number}");
            }
        )*};
    }
    macro_rules! as_string {
        ($($ty:ty),*) => {$(
            if let Some(string) = value.downcast_ref::<$ty>() {
                return write_json_string(writer, string);
            }
        )*};
    }
    as_number!(
        u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, bool
    );
    as_string!(String, &'static str, Box<str>, Arc<str>, Arc<String>);
    if let Some(float) = value
        .downcast_ref::<f64>()
        .copied()
        .or_else(|| value.downcast_ref::<f32>().map(|&f| f64::from(f)))
    {
        return if float.is_finite() {
            write!(writer, "{float}")
        } else {
            write_json_string(writer, &format!("{float}"))
        };
    }
    if let Some(c) = value.downcast_ref::<char>() {
        return write_json_string(writer, c.encode_utf8(&mut [0; 4]));
    }
    write_json_string(writer, &format!("{:?}", Field::Var(leaf)))
}

fn write_json_string(writer: &mut Writer<'_>, string: &str) -> fmt::Result {
    writer.write_char('"')?;
    let mut rest = string;
    while let Some(at) = rest.find(|c: char| c == '"' || c == '\\' || c < ' ') {
        writer.write_str(&rest[..at])?;
        let c = rest[at..].chars().next().unwrap_or_default();
        match c {
            '"' => writer.write_str("\\\"")?,
            '\\' => writer.write_str("\\\\")?,
            '\n' => writer.write_str("\\n")?,
            '\r' => writer.write_str("\\r")?,
            '\t' => writer.write_str("\\t")?,
            c => write!(writer, "\\u{:04x}", u32::from(c))?,
        }
        rest = &rest[at + c.len_utf8()..];
    }
    writer.write_str(rest)?;
    writer.write_char('"')
}

pub use super::spans::carry_spans;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_keys_are_told_from_nested_keys_and_string_values() {
        let line = r#"{"a":1,"x":{"@contextvars":2},"s":"\"@contextvars\":","@@contextvars":3"#;
        assert!(!has_top_level_key(line, 0, JSON_KEY));
        assert!(has_top_level_key(line, 1, JSON_KEY));
        assert!(!has_top_level_key(line, 2, JSON_KEY));
        assert!(has_top_level_key(r#"{"@contextvars" : 1"#, 0, JSON_KEY));
    }

    #[test]
    fn json_strings_escape_what_json_requires() {
        let mut out = String::new();
        write_json_string(&mut Writer::new(&mut out), "a\"b\\c\nd\u{1}é").unwrap();
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
    }
}
