//! Context variables on every log line (feature `tracing`).
//!
//! [`ContextFields`] wraps one of tracing-subscriber's event formatters (text or JSON) and
//! adds, to every event it writes, the context variables **that opted into logs**
//! (`#[context_var(log)]`, [`Key::LOG`](crate::Key::LOG)) as they are in the context the
//! event is emitted from. A variable that did not opt in is never written: context often holds
//! secrets (tokens, credentials, personal data), so logging is opt-in per variable.
//!
//! ```text
//! 2026-11-23T15:40:00.000000Z  INFO app: order placed amount=12 tenant="acme" request_id="r-17"
//! {"timestamp":"…","level":"INFO","fields":{"message":"order placed","amount":12},"target":"app","@contextvars":{"tenant":"acme","request_id":"r-17"}}
//! ```
//!
//! - **Text** ([`ContextFields::text`]): after the event's own fields, as `name=value`, the
//!   value formatted with `Debug` (as tracing writes `?value` fields).
//! - **JSON** ([`ContextFields::json`]): one more top-level member, [`JSON_KEY`]
//!   (`"@contextvars"`), an object of the variables. Strings, integers, floats, `bool` and
//!   `char` (also behind `Box`/`Arc` for strings) are written as JSON values; any other type
//!   as the JSON string of its `Debug` output.
//!
//! # A JSON key that cannot collide
//!
//! With `json().flatten_event(true)`, an event's fields are top-level members of the line,
//! next to the formatter's own (`timestamp`, `level`, …), so a field named like the member
//! this crate adds would make a line with the same key twice, which strict parsers reject and
//! lenient ones resolve by dropping one. The member is therefore `"@contextvars"`: a field
//! named with an identifier (`context = …`, `tenant.id = …`) can never be spelled so. Only a
//! field named with that exact string literal (`"@contextvars" = …`) could, and then the
//! member takes one more `@` (`"@@contextvars"`, and so on until the key is free): a line
//! never has a key twice, and no field is lost.
//!
//! # Spans
//!
//! An event carries the fields of the context it is emitted in, whatever span it is in. The
//! lines tracing-subscriber writes about a span itself (`with_span_events`: `new`, `enter`,
//! `exit`, `close`) are events too, and by default carry the context current where they are
//! written: for `close`, that is wherever the span's last handle is dropped, which may be
//! another task than the one that created the span, or a task without a context. Add
//! [`SpanContextLayer`] to the subscriber and they carry the context the span was *created*
//! in instead, whoever enters, exits or drops it.
//!
//! The variables are read when the event is formatted, on the thread that emits it, so an
//! event from a task spawned with [`spawn`](crate::spawn), a closure run by
//! [`spawn_blocking`](crate::spawn_blocking), a thread from
//! [`thread::spawn`](crate::thread::spawn) or a request served through the tower layer
//! carries the fields of the context it runs in, and an event from a task that runs outside
//! any context carries none.
//!
//! # Why a formatter wrapper
//!
//! A tracing event's fields are fixed by its call site, so no layer can add fields to it;
//! the choice is where to write them. Entering a span per context would make the values
//! appear only where a span was entered (not in a spawned task or thread that inherited the
//! context without the span) and would cost a span per request and per task. Wrapping the
//! [`FormatEvent`](https://docs.rs/tracing-subscriber/0.3/tracing_subscriber/fmt/trait.FormatEvent.html)
//! reads the context that is current when the line is written, which is
//! exactly the context the event belongs to, works for the text and JSON formats alike, and
//! costs nothing where nothing logs. The inner formatter writes the line into a buffer (one
//! per thread, reused), and the wrapper adds the fields before the line's end.
//!
//! Colours: tracing-subscriber gives a formatter writing into a buffer no ANSI colours
//! unless the format asks for them itself, so to keep colours on a terminal, say so on the
//! inner format: `format().with_ansi(true)`.
//!
//! ```
//! # use context_core as contextvars;
//! use contextvars::tracing::ContextFields;
//! use contextvars::{ContextVar, Key, NoDefault};
//! use tracing_subscriber::fmt::format;
//! # use std::sync::{Arc, Mutex};
//! # use std::io::Write;
//! # #[derive(Clone, Default)] struct Buffer(Arc<Mutex<Vec<u8>>>);
//! # impl Write for Buffer {
//! #     fn write(&mut self, b: &[u8]) -> std::io::Result<usize> { self.0.lock().unwrap().write(b) }
//! #     fn flush(&mut self) -> std::io::Result<()> { Ok(()) }
//! # }
//! # let buffer = Buffer::default();
//! # let out = buffer.clone();
//!
//! # #[allow(non_camel_case_types)] struct TENANT {}
//! // What `#[context_var(name = "tenant", log)] static TENANT: String;` declares.
//! impl Key for TENANT {
//!     type Value = String;
//!     type Default = NoDefault;
//!     const LOG: bool = true;
//!     # fn fmt_value(v: &String, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { std::fmt::Debug::fmt(v, f) }
//! }
//! static TENANT: ContextVar<TENANT> = ContextVar::new("tenant");
//!
//! # #[allow(non_camel_case_types)] struct API_KEY {}
//! // Not opted in: never logged.
//! # impl Key for API_KEY { type Value = String; type Default = NoDefault; }
//! static API_KEY: ContextVar<API_KEY> = ContextVar::new("api_key");
//!
//! let subscriber = tracing_subscriber::fmt()
//!     .event_format(ContextFields::text(format().without_time()))
//! #   .with_writer(move || buffer.clone())
//!     .finish();
//! tracing::subscriber::with_default(subscriber, || {
//!     let _tenant = TENANT.set("acme".to_string());
//!     let _key = API_KEY.set("s3cr3t".to_string());
//!     tracing::info!(amount = 12, "order placed");
//! });
//! # let out = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
//! // INFO rust_out: order placed amount=12 tenant="acme"
//! # assert!(out.ends_with("order placed amount=12 tenant=\"acme\"\n"), "{out}");
//! # assert!(!out.contains("s3cr3t"));
//! ```

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

/// An event formatter that writes what `inner` writes, plus the context variables that opted
/// into logs. See the [module docs](self).
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
    /// [`JSON_KEY`] member holding the variables (see the [module docs](self) for why that
    /// name).
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
/// `flatten_event(true)`. See [A JSON key that cannot collide](self#a-json-key-that-cannot-collide).
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
        let context = span_context(ctx, event).unwrap_or_else(Context::current);
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
                Style::Text => write_text(&mut writer, &line, &context),
                Style::Json => write_json(&mut writer, &line, &context),
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

fn logged(context: &Context) -> impl Iterator<Item = (&'static str, ValueRef<'_>)> {
    context.iter().filter(|(_, value)| value.is_logged())
}

/// Splits a formatted line into its text and its line end.
fn split_line_end(line: &str) -> (&str, &str) {
    let body = line.trim_end_matches(['\n', '\r']);
    (body, &line[body.len()..])
}

fn write_text(writer: &mut Writer<'_>, line: &str, context: &Context) -> fmt::Result {
    let (body, end) = split_line_end(line);
    writer.write_str(body)?;
    for (name, value) in logged(context) {
        write!(writer, " {name}={value:?}")?;
    }
    let mut result = Ok(());
    crate::metadata::for_each_logged(context, |key, value| {
        result = result.and_then(|()| write!(writer, " {key}={value:?}"));
    });
    result?;
    writer.write_str(end)
}

fn write_json(writer: &mut Writer<'_>, line: &str, context: &Context) -> fmt::Result {
    let (body, end) = split_line_end(line);
    let mut fields = logged(context).peekable();
    // Metadata entries opted into logs, each a member of its own, after the variables (an
    // entry named like a variable is left out: a JSON object has each key once).
    let mut metadata = Vec::new();
    crate::metadata::for_each_logged(context, |key, value| {
        if logged(context).all(|(name, _)| name != key) {
            metadata.push((key.to_string(), value.to_string()));
        }
    });
    let Some(open) = body.strip_suffix('}').filter(|_| body.starts_with('{')) else {
        // Not a JSON object: write the line as it is, and the fields as text.
        return write_text(writer, line, context);
    };
    writer.write_str(open)?;
    if fields.peek().is_some() || !metadata.is_empty() {
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
        let mut written = 0;
        for (name, value) in fields {
            if written > 0 {
                writer.write_char(',')?;
            }
            written += 1;
            write_json_string(writer, name)?;
            writer.write_char(':')?;
            write_json_value(writer, value)?;
        }
        for (key, value) in &metadata {
            if written > 0 {
                writer.write_char(',')?;
            }
            written += 1;
            write_json_string(writer, key)?;
            writer.write_char(':')?;
            write_json_string(writer, value)?;
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
fn write_json_value(writer: &mut Writer<'_>, value: ValueRef<'_>) -> fmt::Result {
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
    write_json_string(writer, &format!("{value:?}"))
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
