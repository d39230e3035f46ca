//! The gateway's log: `tracing` events to standard error, filtered by `MCPMUX_LOG`,
//! either human-readable (the default) or as JSON lines (`--log-format json`).
//!
//! A JSON line is one object: `timestamp` (RFC 3339, UTC), `level`, `target`,
//! `message`, the fields of every span the event happened in (outermost first, so
//! an inner span's field wins), `spans` (their names, outermost first, joined by `:`),
//! then the event's own fields, which win over the spans'. Everything about one server
//! carries the field `server`, from the event or from its `upstream` span; a
//! connection's events carry its `connection` span's `peer`, `session` and `key` (the
//! key's name).

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// The variable that sets the log filter (`info` when unset or invalid).
pub const FILTER_VARIABLE: &str = "MCPMUX_LOG";

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// For people: `TIME LEVEL span{fields}:span{fields}: target: message fields`.
    #[default]
    Text,
    /// For log collectors: one JSON object per line.
    Json,
}

/// Installs the process's log: `format` on standard error, filtered by `MCPMUX_LOG`.
/// Does nothing when a log is installed already.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env(FILTER_VARIABLE).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal, not for files and log collectors.
    let ansi = std::io::stderr().is_terminal();
    let _ =
        tracing::subscriber::set_global_default(subscriber(format, filter, ansi, std::io::stderr));
}

/// A subscriber writing `format` lines to `writer`, filtered by `filter`.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(
            builder
                .with_ansi(false)
                .fmt_fields(JsonFields::new())
                .event_format(JsonLines)
                .finish(),
        ),
    }
}

/// Writes each event as one JSON object on one line (see the module's documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut line = Map::new();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        line.insert("timestamp".into(), Value::String(timestamp));
        line.insert("level".into(), Value::from(metadata.level().as_str()));
        line.insert("target".into(), Value::from(metadata.target()));
        let mut names = Vec::new();
        for span in ctx
            .event_scope()
            .into_iter()
            .flat_map(|scope| scope.from_root())
        {
            names.push(span.name());
            let extensions = span.extensions();
            // JsonFields keeps each span's fields as a JSON object.
            let fields = extensions
                .get::<FormattedFields<N>>()
                .and_then(|f| serde_json::from_str::<Map<String, Value>>(f.as_str()).ok());
            line.extend(fields.into_iter().flatten());
        }
        if !names.is_empty() {
            line.insert("spans".into(), Value::from(names.join(":")));
        }
        event.record(&mut FieldsOf(&mut line));
        line.entry("message").or_insert_with(|| Value::from(""));
        // serde_json escapes every control character: a line stays one line.
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Collects an event's fields into a JSON object.
struct FieldsOf<'a>(&'a mut Map<String, Value>);

impl Visit for FieldsOf<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::from(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    /// The lines `log` writes in `format`, at debug level.
    fn lines(format: LogFormat, log: impl FnOnce()) -> Vec<String> {
        let buffer = Buffer::default();
        let subscriber = subscriber(format, EnvFilter::new("debug"), false, buffer.clone());
        tracing::subscriber::with_default(subscriber, log);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn parse(line: &str) -> Map<String, Value> {
        match serde_json::from_str(line) {
            Ok(Value::Object(object)) => object,
            other => panic!("not a JSON object: {line:?} ({other:?})"),
        }
    }

    #[test]
    fn a_json_line_has_the_event_and_its_spans_fields() {
        let lines = lines(LogFormat::Json, || {
            let connection = tracing::info_span!(
                "connection",
                peer = "127.0.0.1:5000",
                session = tracing::field::Empty
            );
            let _c = connection.enter();
            connection.record("session", "1a2b3c4d");
            let upstream = tracing::info_span!("upstream", server = "everything");
            let _u = upstream.enter();
            tracing::info!(attempt = 3, ok = true, "carried {}", "a \"quoted\"\nline");
            tracing::warn!(server = "other", "an event's own field wins");
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        let first = parse(&lines[0]);
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["message"], "carried a \"quoted\"\nline");
        assert_eq!(first["server"], "everything");
        assert_eq!(first["peer"], "127.0.0.1:5000");
        assert_eq!(first["session"], "1a2b3c4d");
        assert_eq!(first["attempt"], 3);
        assert_eq!(first["ok"], true);
        assert_eq!(first["spans"], "connection:upstream");
        assert_eq!(first["target"], module_path!());
        let timestamp = first["timestamp"].as_str().unwrap();
        assert!(
            timestamp.len() > 20 && timestamp.ends_with('Z') && timestamp.contains('T'),
            "RFC 3339 UTC: {timestamp}"
        );
        let second = parse(&lines[1]);
        assert_eq!(second["level"], "WARN");
        assert_eq!(second["server"], "other");
    }

    #[test]
    fn a_json_line_outside_spans_has_no_span_fields() {
        let lines = lines(LogFormat::Json, || tracing::debug!("alone"));
        let line = parse(&lines[0]);
        assert_eq!(line["message"], "alone");
        assert_eq!(line["level"], "DEBUG");
        assert!(line.get("spans").is_none(), "{line:?}");
    }

    #[test]
    fn a_text_line_names_the_server_of_its_span() {
        let lines = lines(LogFormat::Text, || {
            let upstream = tracing::info_span!("upstream", server = "everything");
            let _u = upstream.enter();
            tracing::info!("carried");
        });
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].contains(" INFO upstream{server=\"everything\"}: "),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("carried"));
    }
}
