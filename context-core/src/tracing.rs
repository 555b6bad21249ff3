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
//! {"timestamp":"…","level":"INFO","fields":{"message":"order placed","amount":12},"target":"app","context":{"tenant":"acme","request_id":"r-17"}}
//! ```
//!
//! - **Text** ([`ContextFields::text`]): after the event's own fields, as `name=value`, the
//!   value formatted with `Debug` (as tracing writes `?value` fields).
//! - **JSON** ([`ContextFields::json`]): one more top-level member, `"context"`, an object
//!   of the variables. Strings, integers, floats, `bool` and `char` (also behind `Box`/`Arc`
//!   for strings) are written as JSON values; any other type as the JSON string of its
//!   `Debug` output.
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
//! [`FormatEvent`] reads the context that is current when the line is written, which is
//! exactly the context the event belongs to, works for the text and JSON formats alike, and
//! costs nothing where nothing logs. The inner formatter writes the line into a buffer (one
//! per thread, reused), and the wrapper adds the fields before the line's end.
//!
//! Colours: tracing-subscriber gives a formatter writing into a buffer no ANSI colours
//! unless the format asks for them itself, so to keep colours on a terminal, say so on the
//! inner format: `format().with_ansi(true)`.
//!
//! ```
//! use context_core::tracing::ContextFields;
//! use context_core::{ContextVar, Key, NoDefault};
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

use tracing_core::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::context::{Context, ValueRef};

/// An event formatter that writes what `inner` writes, plus the context variables that opted
/// into logs. See the [module docs](self).
///
/// Use it with [`fmt().event_format(…)`](tracing_subscriber::fmt::SubscriberBuilder::event_format)
/// or a layer's [`map_event_format`](tracing_subscriber::fmt::Layer::map_event_format):
///
/// ```
/// use context_core::tracing::ContextFields;
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
    /// use context_core::tracing::ContextFields;
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
    /// `"context"` member holding the variables.
    ///
    /// ```
    /// use context_core::tracing::ContextFields;
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
    /// use context_core::tracing::ContextFields;
    ///
    /// assert_eq!(*ContextFields::text(7).get_ref(), 7);
    /// ```
    #[must_use]
    pub fn get_ref(&self) -> &F {
        &self.inner
    }
}

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
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let context = Context::current();
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

/// Calls `f` with the name and value of each variable in the current context that opted
/// into logs ([`Key::LOG`](crate::Key::LOG)): the building block for another log or trace
/// integration (an OpenTelemetry exporter, a custom formatter).
///
/// ```
/// use context_core::tracing::for_each_logged;
/// # use context_core::{ContextVar, Key, NoDefault};
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
    writer.write_str(end)
}

fn write_json(writer: &mut Writer<'_>, line: &str, context: &Context) -> fmt::Result {
    let (body, end) = split_line_end(line);
    let mut fields = logged(context).peekable();
    let Some(open) = body.strip_suffix('}').filter(|_| body.starts_with('{')) else {
        // Not a JSON object: write the line as it is, and the fields as text.
        return write_text(writer, line, context);
    };
    writer.write_str(open)?;
    if fields.peek().is_some() {
        if !open.trim_end().ends_with('{') {
            writer.write_char(',')?;
        }
        writer.write_str("\"context\":{")?;
        for (i, (name, value)) in fields.enumerate() {
            if i > 0 {
                writer.write_char(',')?;
            }
            write_json_string(writer, name)?;
            writer.write_char(':')?;
            write_json_value(writer, value)?;
        }
        writer.write_char('}')?;
    }
    writer.write_char('}')?;
    writer.write_str(end)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_what_json_requires() {
        let mut out = String::new();
        write_json_string(&mut Writer::new(&mut out), "a\"b\\c\nd\u{1}é").unwrap();
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
    }
}
