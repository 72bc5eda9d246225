//! Logging and error reporting: `tracing` to stderr with an env filter
//! (`RUST_LOG`, default `info`), and Sentry through `sentry-tracing` when a
//! DSN is configured, so operational errors (`error!`) become Sentry events
//! while pipeline failures (logged at `info`/`warn`) do not.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Keeps Sentry flushing until dropped at exit.
pub struct Telemetry {
    _sentry: Option<sentry::ClientInitGuard>,
}

pub fn init(sentry_dsn: Option<&str>) -> Telemetry {
    let guard = sentry_dsn.map(|dsn| {
        sentry::init((
            dsn,
            sentry::ClientOptions {
                release: sentry::release_name!(),
                attach_stacktrace: true,
                ..Default::default()
            },
        ))
    });
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // Only errors become Sentry events; warnings and below at most
    // breadcrumbs.
    let sentry_layer = guard.as_ref().map(|_| {
        sentry_tracing::layer().event_filter(|metadata| match *metadata.level() {
            tracing::Level::ERROR => sentry_tracing::EventFilter::Event,
            tracing::Level::WARN | tracing::Level::INFO => sentry_tracing::EventFilter::Breadcrumb,
            _ => sentry_tracing::EventFilter::Ignore,
        })
    });
    let _ = tracing_subscriber::registry().with(filter).with(fmt).with(sentry_layer).try_init();
    Telemetry { _sentry: guard }
}
