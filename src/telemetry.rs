//! Logging and tracing set-up.
//!
//! Logs: `tracing` to stderr, filtered by `RUST_LOG` (default [`DEFAULT_FILTER`]), human-readable or JSON lines
//! (`AVEMINT_LOG_FORMAT=text|json`). Both are checked at start: an unknown format or a `RUST_LOG`
//! directive that does not parse is a start-up error ([`LogSettings::parse`]), never silently ignored.
//! Every line carries the fields of the spans it was written in, so the request id of the request
//! span (`http::request_id`) is on every line of a request, its renewal, Ave calls, store and hook
//! included. JSON lines also keep the target. Colour codes only when stderr is a terminal.
//!
//! Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (and
//! `OTEL_SDK_DISABLED` is not `true`, `OTEL_TRACES_EXPORTER` is not `none`), avemint's spans are
//! exported over OTLP/HTTP (protobuf) by the OpenTelemetry SDK, which reads the other standard
//! variables itself (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, …). Otherwise no exporter is built. [`Telemetry::shutdown`]
//! flushes the spans still buffered.
//!
//! Nothing in avemint logs or records a token, code, secret or cookie value; this module only
//! decides where the lines and spans go.

use std::fmt;
use std::io::IsTerminal as _;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::field::{RecordFields, VisitOutput as _};
use tracing_subscriber::filter::{FilterExt as _, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::{DefaultVisitor, FormatFields, Writer};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// `serve`'s filter when `RUST_LOG` is unset: `info`, except the database library's own lines below `warn`
/// (PostgreSQL's notices, such as "relation … already exists, skipping" at every start, come as sqlx `INFO` lines;
/// its slow-statement warnings stay).
pub const DEFAULT_FILTER: &str = "info,sqlx=warn";

/// Why logging or tracing cannot be set up; each names the variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("AVEMINT_LOG_FORMAT must be `text` or `json`, not {0:?}")]
    LogFormat(String),
    #[error("RUST_LOG is not a valid filter ({0})")]
    Filter(String),
    #[error("OTEL_EXPORTER_OTLP_ENDPOINT: the OTLP exporter cannot be built ({0})")]
    Exporter(String),
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where log lines are filtered and how they look.
#[derive(Debug, Clone)]
pub struct LogSettings {
    filter: String,
    pub format: LogFormat,
}

impl LogSettings {
    /// From the values of `AVEMINT_LOG_FORMAT` and `RUST_LOG` (unset or empty: `text` and `default_filter`).
    pub fn parse(
        log_format: Option<&str>,
        rust_log: Option<&str>,
        default_filter: &str,
    ) -> Result<Self, TelemetryError> {
        let format = match log_format.map(str::trim).unwrap_or("") {
            "" | "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(TelemetryError::LogFormat(other.to_owned())),
        };
        let filter = match rust_log.map(str::trim) {
            Some(f) if !f.is_empty() => f.to_owned(),
            _ => default_filter.to_owned(),
        };
        parse_filter(&filter)?;
        Ok(Self { filter, format })
    }

    /// From the process environment.
    pub fn from_env(default_filter: &str) -> Result<Self, TelemetryError> {
        let format = std::env::var("AVEMINT_LOG_FORMAT").ok();
        let rust_log = std::env::var("RUST_LOG").ok();
        Self::parse(format.as_deref(), rust_log.as_deref(), default_filter)
    }

    /// `default_filter` as text lines (tests, `avemint keys`).
    pub fn plain(default_filter: &str, json: bool) -> Self {
        Self {
            filter: default_filter.to_owned(),
            format: if json { LogFormat::Json } else { LogFormat::Text },
        }
    }
}

/// Strict: a directive that does not parse is an error (`EnvFilter::try_new` would drop it silently).
fn parse_filter(filter: &str) -> Result<EnvFilter, TelemetryError> {
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        directive
            .parse::<tracing_subscriber::filter::Directive>()
            .map_err(|e| TelemetryError::Filter(format!("{directive:?}: {e}")))?;
    }
    EnvFilter::builder()
        .parse(filter)
        .map_err(|e| TelemetryError::Filter(e.to_string()))
}

/// Libraries whose detailed lines carry payloads: tungstenite logs every WebSocket message and close frame it reads
/// or writes (at `trace` and `debug`), and an upstream echoing a token would put it in the log. They are capped at
/// `info` whatever `RUST_LOG` says (`RUST_LOG=trace` and `RUST_LOG=tungstenite=trace` included).
const CAPPED: [&str; 2] = ["tungstenite", "tokio_tungstenite"];

/// Every target at every level, except the [`CAPPED`] ones above `info`.
fn capped() -> Targets {
    CAPPED
        .iter()
        .fold(Targets::new().with_default(tracing::Level::TRACE), |t, target| {
            t.with_target(*target, tracing::Level::INFO)
        })
}

/// Where spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracing {
    /// No exporter.
    Off,
    /// OTLP/HTTP with every setting from the standard `OTEL_*` variables.
    FromEnv,
    /// OTLP/HTTP to this full traces URL (`…/v1/traces`; tests); the other settings from `OTEL_*`.
    Endpoint(String),
}

impl Tracing {
    /// `FromEnv` when an OTLP endpoint variable is set and the SDK is not disabled.
    pub fn from_env() -> Self {
        let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
        let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
            || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim().eq_ignore_ascii_case("none"));
        if !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
            Tracing::FromEnv
        } else {
            Tracing::Off
        }
    }
}

/// Keeps the span exporter (if any) until shutdown.
#[must_use = "dropping it without `shutdown` loses the spans still buffered"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans buffered so far (blocks: call it off the async runtime's threads).
    pub fn flush(&self) {
        if let Some(p) = &self.provider
            && let Err(e) = p.force_flush()
        {
            tracing::warn!(error = %e, "spans could not be flushed");
        }
    }

    /// Flushes the buffered spans and stops the exporter (blocks: call it after the runtime ended).
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("avemint: spans could not be flushed at shutdown: {e}");
        }
    }
}

/// Installs the global subscriber writing to stderr; later calls install nothing.
pub fn init_stderr(logs: &LogSettings, tracing: Tracing) -> Result<Telemetry, TelemetryError> {
    install(logs, tracing, std::io::stderr, std::io::stderr().is_terminal())
}

/// Installs the global subscriber writing plain lines to `writer` (tests, benchmarks); later calls
/// are no-ops.
pub fn init<W>(default_filter: &str, json: bool, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let _ = install(&LogSettings::plain(default_filter, json), Tracing::Off, writer, false);
}

/// Like [`init`], and exports spans as `tracing` says (tests of the OTLP export).
pub fn init_with_tracing<W>(
    default_filter: &str,
    json: bool,
    writer: W,
    tracing: Tracing,
) -> Result<Telemetry, TelemetryError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    install(&LogSettings::plain(default_filter, json), tracing, writer, false)
}

fn install<W>(logs: &LogSettings, tracing: Tracing, writer: W, ansi: bool) -> Result<Telemetry, TelemetryError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = parse_filter(&logs.filter)?.and(capped());
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(ansi);
    let fmt = match logs.format {
        LogFormat::Text if ansi => fmt.with_target(false).with_filter(filter).boxed(),
        LogFormat::Text => fmt
            .fmt_fields(PlainFields)
            .with_target(false)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => fmt.json().with_target(true).with_filter(filter).boxed(),
    };
    let provider = match tracing {
        Tracing::Off => None,
        Tracing::FromEnv => Some(provider(None)?),
        Tracing::Endpoint(url) => Some(provider(Some(url))?),
    };
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![fmt];
    if let Some(p) = &provider {
        // avemint's own spans (requests and their steps), whatever `RUST_LOG` says of the log lines.
        let spans = Targets::new().with_target("avemint", tracing::Level::INFO);
        let otel = tracing_opentelemetry::layer()
            .with_tracer(p.tracer("avemint"))
            .with_filter(spans)
            .boxed();
        layers.push(otel);
    }
    // A second install (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(layers).try_init();
    Ok(Telemetry { provider })
}

/// The tracer provider: OTLP/HTTP protobuf, batched, resource from the `OTEL_*` variables
/// (`service.name` defaults to `avemint`).
fn provider(endpoint: Option<String>) -> Result<SdkTracerProvider, TelemetryError> {
    let builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary);
    let builder = match endpoint {
        Some(url) => builder.with_endpoint(url),
        None => builder,
    };
    let exporter = builder.build().map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let detected = Resource::builder().build();
    let unnamed = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_none_or(|v| v.as_str().starts_with("unknown_service"));
    let mut resource = Resource::builder();
    if unnamed {
        resource = resource.with_service_name("avemint");
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The text format's field formatter without colour: what `tracing_subscriber`'s `DefaultFields` writes, to the
/// byte, but a string field of plain printable ASCII (no `"` or `\\`: request ids, methods, routes, labels) is
/// written as it is instead of through `Debug`'s escaping; every other field goes to `DefaultVisitor` itself. The
/// fields of a span are formatted when the span is made, whether or not a line is ever written in it, so this is
/// work every request pays for its spans (issue 25: 4 % of a token request's instructions, `bench/profiles/`).
struct PlainFields;

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = PlainVisitor {
            writer,
            is_empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct PlainVisitor<'w> {
    writer: Writer<'w>,
    /// Nothing written yet (no separating space before the next field).
    is_empty: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// Writes one field as `DefaultVisitor` does. A `log.` field (log metadata, which it leaves out) never gets here.
    fn default(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        let mut inner = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut inner);
        self.result = inner.finish();
        self.is_empty = false;
    }
}

impl tracing::field::Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let plain = |b: u8| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\';
        if name == "message" || name.starts_with("r#") || !value.bytes().all(plain) {
            return self.default(|v| v.record_str(field, value));
        }
        // Pieces, not `write!`: formatting machinery per field cost more than the field.
        let separator = if self.is_empty { "" } else { " " };
        self.is_empty = false;
        self.result = [separator, name, "=\"", value, "\""]
            .into_iter()
            .try_for_each(|piece| self.writer.write_str(piece));
    }

    fn record_error(&mut self, field: &tracing::field::Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_ok() && !field.name().starts_with("log.") {
            self.default(|v| v.record_error(field, value));
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() && !field.name().starts_with("log.") {
            self.default(|v| v.record_debug(field, value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_settings_refuse_unknown_formats_and_bad_filters() {
        let ok = LogSettings::parse(None, None, "info").expect("defaults");
        assert_eq!(ok.format, LogFormat::Text);
        assert_eq!(ok.filter, "info");
        let json = LogSettings::parse(Some("json"), Some("avemint=debug,warn"), "info").expect("json");
        assert_eq!(
            (json.format, json.filter.as_str()),
            (LogFormat::Json, "avemint=debug,warn")
        );
        assert_eq!(
            LogSettings::parse(Some(""), Some(""), "info").expect("empty").filter,
            "info"
        );
        let bad = LogSettings::parse(Some("xml"), None, "info").expect_err("format");
        assert!(bad.to_string().starts_with("AVEMINT_LOG_FORMAT"), "{bad}");
        for filter in ["avemint=loud", "info,foo=bar=baz", "[{"] {
            let bad = LogSettings::parse(None, Some(filter), "info").expect_err(filter);
            assert!(bad.to_string().starts_with("RUST_LOG"), "{bad}");
        }
    }

    /// What the text format writes for `emit`'s lines with the default field formatter and with `PlainFields`.
    fn both_ways(emit: impl Fn()) -> (String, String) {
        #[derive(Clone, Default)]
        struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("buffer").extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (default, plain) = (Buffer::default(), Buffer::default());
        let layer = |buffer: Buffer| {
            tracing_subscriber::fmt::layer()
                .with_writer(move || buffer.clone())
                .with_ansi(false)
                .without_time()
                .with_target(false)
        };
        let subscriber = tracing_subscriber::registry().with(layer(default.clone()));
        tracing::subscriber::with_default(subscriber, &emit);
        let subscriber = tracing_subscriber::registry().with(layer(plain.clone()).fmt_fields(PlainFields));
        tracing::subscriber::with_default(subscriber, &emit);
        let text = |b: Buffer| String::from_utf8(b.0.lock().expect("buffer").clone()).expect("utf-8");
        (text(default), text(plain))
    }

    /// Lines in spans whose string fields are `value`, among fields of every other kind.
    fn lines_with(value: &str) {
        let error = std::io::Error::other("disk \"full\"");
        let span = tracing::info_span!("request", request_id = value, method = %value, route = ?value, status = tracing::field::Empty, n = 7u16);
        let _entered = span.enter();
        span.record("status", 200u16);
        span.record("route", value);
        let inner = tracing::info_span!(
            "inner",
            r#type = value,
            flag = true,
            neg = -3i64,
            empty = "",
            "log.target" = value
        );
        let _inner = inner.enter();
        tracing::info!(
            error = &error as &(dyn std::error::Error + 'static),
            plain = value,
            "a message with {value}"
        );
        tracing::info!(value);
    }

    #[test]
    fn plain_fields_write_what_the_default_formatter_writes() {
        for value in [
            "abc",
            "GET /auth/token",
            "3d63d2fa80ca1f397562f1ef5c16906",
            "",
            " ",
            "~!#$%&'()*+,-./:;<=>?@[]^_`{|}",
            "quote \"",
            "back\\slash",
            "line\nbreak",
            "tab\t",
            "\u{1b}[31mred",
            "é",
            "\u{7f}",
        ] {
            let (default, plain) = both_ways(|| lines_with(value));
            assert!(default.lines().count() >= 2, "{default}");
            assert_eq!(plain, default, "{value:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn plain_fields_match_the_default_formatter_on_any_string(value in "\\PC{0,24}|[ -~]{0,24}|.{0,8}") {
            let (default, plain) = both_ways(|| lines_with(&value));
            proptest::prop_assert_eq!(plain, default);
        }
    }
}
