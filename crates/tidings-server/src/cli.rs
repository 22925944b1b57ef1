//! Subcommands: `serve` (the default), `gentoken`, `checkconfig`.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tidings::auth::{mint_hs256, MintClaims, TokenVerifier};
use tidings::config::without_password;
use tidings::consumers::postgres_outbox::outbox_ddl;
use tidings::consumers::{is_sql_name, ConsumerKind, ConsumerSet};
use tidings::Tidings;

use crate::{config_loader, dev_mode};

/// Tidings: a real-time update server.
#[derive(Debug, Parser)]
#[command(
    name = "tidings",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `serve` flags, accepted without the subcommand too.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Mint a token signed with the configured HMAC secret.
    Gentoken(GentokenArgs),
    /// Check a configuration file and print what it configures.
    Checkconfig(CheckconfigArgs),
    /// Print the SQL that creates the PostgreSQL outbox table and its trigger.
    OutboxDdl(OutboxDdlArgs),
}

/// `tidings outbox-ddl`.
#[derive(Debug, Args)]
pub struct OutboxDdlArgs {
    /// The table name (`schema.table` allowed); the consumer's `table`.
    #[arg(long, default_value = "tidings_outbox")]
    pub table: String,
    /// The channel the trigger notifies; the consumer's `notify_channel`.
    #[arg(long, default_value = "tidings_outbox")]
    pub notify_channel: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `tidings serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short, env = "TIDINGS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (overrides the file and TIDINGS_LISTEN).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Log format.
    #[arg(
        long,
        value_enum,
        ignore_case = true,
        env = "TIDINGS_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `tidings=debug` (RUST_LOG syntax). Without
    /// it, `RUST_LOG` if set, else `info`.
    #[arg(long, env = "TIDINGS_LOG_LEVEL")]
    pub log_level: Option<String>,
}

/// `tidings gentoken`.
#[derive(Debug, Args)]
pub struct GentokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    pub sub: String,
    /// Workspaces the user belongs to (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub workspaces: Vec<String>,
    /// Roles (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Lifetime, e.g. `1h`, `15m`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// TOML configuration file to read `jwt.secret` from.
    #[arg(long, short, env = "TIDINGS_CONFIG")]
    pub config: Option<PathBuf>,
}

/// `tidings checkconfig FILE`.
#[derive(Debug, Args)]
pub struct CheckconfigArgs {
    /// The TOML file to check.
    pub file: PathBuf,
}

/// The log filter: `--log-level` (or `TIDINGS_LOG_LEVEL`), else `RUST_LOG`,
/// else `info`. A filter that does not parse is an error, not a silent `info`.
fn log_filter(level: Option<&str>) -> anyhow::Result<tracing_subscriber::EnvFilter> {
    let (source, filter) = match (level, std::env::var("RUST_LOG")) {
        (Some(level), _) => ("--log-level (TIDINGS_LOG_LEVEL)", level.to_owned()),
        (None, Ok(rust_log)) => ("RUST_LOG", rust_log),
        (None, Err(_)) => ("the default", "info".to_owned()),
    };
    tracing_subscriber::EnvFilter::builder()
        .parse(&filter)
        .map_err(|err| anyhow::anyhow!("invalid log filter {filter:?} in {source}: {err}"))
}

/// Whether an event may be logged whatever the filter asks: tungstenite's
/// TRACE lines carry whole WebSocket messages, and so a client's `auth` and
/// `refresh` tokens, which must never reach a log.
fn never_logs_message_bodies(meta: &tracing::Metadata<'_>) -> bool {
    !(*meta.level() == tracing::Level::TRACE && meta.target().starts_with("tungstenite"))
}

/// Formats fields as the default text format does (`message` bare, others
/// `name=value`, `log.*` fields of records from the `log` crate left out),
/// with control characters escaped (`\n` as the two characters `\` `n`): a
/// value that comes from a client (a token's `sub`, a consumed message echoed
/// in a dead-letter reason) must not start a line of its own, which would read
/// as another log entry. JSON escapes them itself.
struct OneLineFields;

impl<'writer> tracing_subscriber::fmt::FormatFields<'writer> for OneLineFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: tracing_subscriber::fmt::format::Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = OneLineVisitor {
            writer,
            seen: false,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct OneLineVisitor<'writer> {
    writer: tracing_subscriber::fmt::format::Writer<'writer>,
    seen: bool,
    result: std::fmt::Result,
}

impl tracing::field::Visit for OneLineVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let shown = format!("{value:?}");
        let text = escape_controls(&shown);
        let separator = if self.seen { " " } else { "" };
        self.seen = true;
        self.result = match field.name() {
            "message" => write!(self.writer, "{separator}{text}"),
            name => write!(self.writer, "{separator}{name}={text}"),
        };
    }
}

/// `text` with every control character written as an escape.
fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    // Unicode's line and paragraph separators break lines in some viewers.
    let breaks = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !text.chars().any(breaks) {
        return text.into();
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c if breaks(c) => {
                let _ = write!(escaped, "\\u{{{:x}}}", u32::from(c));
            }
            c => escaped.push(c),
        }
    }
    escaped.into()
}

fn init_logging(format: LogFormat, filter: tracing_subscriber::EnvFilter) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let registry =
        tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::filter::filter_fn(
                never_logs_message_bodies,
            ));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a file or a pipe.
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => registry.with(layer.fmt_fields(OneLineFields)).init(),
        LogFormat::Json => registry
            .with(layer.json().flatten_event(true).with_current_span(true))
            .init(),
    }
    // A panic is contained by the server (its connection closes, its request
    // answers 500) and logged here, one line in the log's format, rather than
    // as the default hook's raw lines on stderr (which break a JSON log).
    // A log filter that hides the line leaves the panic to the default hook.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !tracing::enabled!(target: "tidings::panic", tracing::Level::ERROR) {
            return default_hook(info);
        }
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(target: "tidings::panic", panic = %info, %backtrace, "panicked");
        } else {
            tracing::error!(target: "tidings::panic", panic = %info, "panicked");
        }
    }));
}

/// Runs the server until SIGINT or SIGTERM.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_format, log_filter(args.log_level.as_deref())?);
    let mut config = config_loader::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let stop = shutdown_signal();
        let dev = if dev_mode::needed(&config) {
            Some(dev_mode::apply(&mut config)?)
        } else {
            None
        };
        // Checked before binding, so that a bad setting is what a start with
        // a busy port reports too (`Tidings::new`, which may join a cluster,
        // comes after the bind).
        config.validate().context("invalid configuration")?;
        TokenVerifier::new(&config.jwt).context("invalid configuration")?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let address = listener.local_addr().context("reading the bound address")?;
        let tidings = Tidings::new(config.clone()).context("invalid configuration")?;
        // Warned only once the start cannot fail: an error that stops it is
        // the only line on stderr.
        if config.api_key.is_none() {
            tracing::warn!("no api_key configured: the server API (/api/publish …) is disabled");
        }
        match (&dev, args.log_format) {
            (Some(dev), LogFormat::Text) => {
                dev_mode::print_banner(&config, dev, &address.to_string())
            }
            // The banner carries the secret, the API key and a token, which
            // must not reach a log; JSON output is for log collectors.
            (Some(_), LogFormat::Json) => tracing::warn!(
                "dev mode: no JWT key configured, so a secret and an API key were generated \
                 for this run; they are shown only with --log-format text"
            ),
            (None, _) => {}
        }
        // A fixed line that scripts and tests can wait for; with JSON logs,
        // stdout stays empty and the `tidings listening` entry carries the address.
        if let LogFormat::Text = args.log_format {
            println!("listening on {address}");
        }
        tracing::info!(%address, node = %tidings.state().node, "tidings listening");
        let consumers = ConsumerSet::start(&tidings);
        tidings.serve(listener, stop).await.context("serving")?;
        consumers.stop(Duration::from_secs(5)).await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Listens for SIGINT and SIGTERM from now on, and returns the future that
/// completes on the first. Registered before the server starts, so a signal
/// that arrives during start-up is handled like any other (the node leaves
/// the cluster cleanly) rather than killing the process by default.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {},
                        _ = terminate.recv() => {},
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Prints a token for `args`.
pub fn gentoken(args: GentokenArgs) -> anyhow::Result<()> {
    let config = config_loader::load(args.config.as_deref())?;
    let secret = config.jwt.secret.as_deref().context(
        "gentoken signs with an HMAC secret: set jwt.secret in the config file or TIDINGS_JWT_SECRET",
    )?;
    let algorithms = &config.jwt.algorithms;
    if !algorithms.is_empty() && !algorithms.iter().any(|a| a == "HS256") {
        anyhow::bail!(
            "gentoken signs with HS256, which jwt.algorithms ({}) does not accept",
            algorithms.join(", ")
        );
    }
    let claims = MintClaims {
        sub: args.sub,
        workspaces: args.workspaces,
        roles: args.roles,
        ttl: Some(args.ttl),
        ..MintClaims::default()
    }
    .for_settings(&config.jwt);
    write_stdout(&format!("{}\n", mint_hs256(secret, &claims)?))
}

/// Validates a configuration file, including its key files.
pub fn checkconfig(args: CheckconfigArgs) -> anyhow::Result<()> {
    // The loader's errors name the file or the environment variable at fault.
    let config = config_loader::load(Some(&args.file))?;
    config.validate().context("invalid configuration")?;
    let mut out = String::new();
    let dev = dev_mode::needed(&config);
    let mut jwt = config.jwt.clone();
    if dev {
        writeln!(
            out,
            "note: no jwt key configured; `serve` would run in dev mode"
        )?;
        // What the generated secret will accept, checked with a stand-in.
        jwt.secret = Some("x".repeat(32));
    }
    let algorithms = TokenVerifier::new(&jwt)
        .context("invalid configuration")?
        .algorithms()
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let namespaces = config.effective_namespaces();
    writeln!(out, "{}: ok", args.file.display())?;
    writeln!(out, "  listen     {}", config.listen)?;
    writeln!(
        out,
        "  jwt        {}",
        describe_jwt(&config.jwt, dev, &algorithms)
    )?;
    let engine = &config.engine;
    match engine.kind {
        tidings::config::EngineKind::Memory => writeln!(out, "  engine     memory (one node)")?,
        tidings::config::EngineKind::Redis => writeln!(
            out,
            "  engine     redis{} at {} (key prefix {})",
            if engine.redis_cluster { " cluster" } else { "" },
            without_password(&engine.redis_url),
            engine.redis_prefix
        )?,
    }
    writeln!(
        out,
        "  server API {}",
        match (&config.api_key, dev) {
            (Some(_), _) => "enabled",
            (None, true) => "enabled (dev mode generates an api_key)",
            (None, false) => "disabled (no api_key)",
        }
    )?;
    for (name, ns) in &namespaces {
        writeln!(
            out,
            "  namespace  {name}: {}-{} segments, history {} events / {}",
            ns.min_segments,
            ns.max_segments,
            ns.history_size,
            humantime::format_duration(ns.history_ttl)
        )?;
    }
    for consumer in &config.consumers {
        let source = match consumer.kind {
            ConsumerKind::RedisStream => format!(
                "streams {} (group {}) at {}",
                consumer.streams.join(", "),
                consumer.group,
                without_password(consumer.redis_url.as_deref().unwrap_or(&engine.redis_url))
            ),
            ConsumerKind::PostgresOutbox => format!(
                "table {} at {}",
                consumer.table,
                without_password(consumer.postgres_url.as_deref().unwrap_or_default())
            ),
        };
        writeln!(
            out,
            "  consumer   {}: {} {source}, {} mode, idempotency window {}{}",
            consumer.name,
            consumer.kind.as_str(),
            consumer.mode.as_str(),
            humantime::format_duration(consumer.idempotency_window),
            if consumer.enabled { "" } else { " (disabled)" }
        )?;
    }
    write_stdout(&out)
}

/// What verifies tokens, without the key itself: the key's source, the
/// algorithms, and the `iss`/`aud` and claim names that are checked.
fn describe_jwt(jwt: &tidings::config::JwtSettings, dev: bool, algorithms: &str) -> String {
    let key = if dev {
        "a generated HMAC secret (dev mode)".to_owned()
    } else if let Some(path) = &jwt.jwks_file {
        format!("JWKS file {}", path.display())
    } else if let Some(path) = &jwt.public_key_file {
        format!("public key file {}", path.display())
    } else {
        "HMAC secret".to_owned()
    };
    let mut text = format!("{key}; algorithms {algorithms}");
    if let Some(issuer) = &jwt.issuer {
        text.push_str(&format!("; iss {issuer}"));
    }
    if let Some(audience) = &jwt.audience {
        text.push_str(&format!("; aud {audience}"));
    }
    text.push_str(&format!(
        "; claims {}/{}; exp {}",
        jwt.workspaces_claim,
        jwt.roles_claim,
        if jwt.require_exp {
            "required"
        } else {
            "optional"
        }
    ));
    text
}

/// Prints the outbox DDL.
pub fn print_outbox_ddl(args: OutboxDdlArgs) -> anyhow::Result<()> {
    if !is_sql_name(&args.table) {
        anyhow::bail!(
            "--table: must be a table name of letters, digits and `_` (optionally `schema.table`)"
        );
    }
    if !is_sql_name(&args.notify_channel) || args.notify_channel.contains('.') {
        anyhow::bail!("--notify-channel: must be a name of letters, digits and `_`");
    }
    write_stdout(&outbox_ddl(&args.table, &args.notify_channel))
}

/// Writes `text` to stdout. A reader that stopped reading (`| head`) is not
/// an error: `println!` would panic on the broken pipe.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => Ok(result?),
    }
}

#[cfg(test)]
mod one_line_log_tests {
    use std::sync::{Arc, Mutex};

    use super::OneLineFields;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_value_with_a_line_break_stays_on_its_line() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .fmt_fields(OneLineFields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            // A token's `sub` and a consumed message's text reach the log.
            let span = tracing::info_span!("conn", user = %"evil\nERROR forged: admin");
            let _entered = span.enter();
            tracing::warn!(reason = %"bad\r\nERROR\u{2028}forged", count = 2, "dead-lettered\u{1b}[2J");
            // What a `log` crate record carries besides its message.
            tracing::info!(log.target = "redis", log.line = 7, "from the log crate");
        });
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(log.lines().count(), 2, "{log}");
        assert!(!log.contains("log.target"), "{log}");
        assert!(log.contains("from the log crate\n"), "{log}");
        assert!(
            log.contains(r"conn{user=evil\nERROR forged: admin}"),
            "{log}"
        );
        assert!(
            log.contains(r"dead-lettered\u{1b}[2J reason=bad\r\nERROR\u{2028}forged count=2"),
            "{log}"
        );
    }
}
