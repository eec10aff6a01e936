//! Server configuration: defaults, then the config file, then `HERALD_*` environment
//! variables and flags (clap merges those two), later ones winning.

use anyhow::{bail, Context};
use herald_dispatcher::{NamespacePolicy, Policies};
use herald_store::Retention;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Flags of `herald serve` (each also readable from its `HERALD_*` variable).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "HERALD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory of the embedded store.
    #[arg(long, env = "HERALD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML config file (namespaces, API keys, limits).
    #[arg(long, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Publisher API keys, comma-separated; `name:key` names a key for namespace rules.
    #[arg(long, env = "HERALD_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,
    /// Secret for HS256 subscriber tokens (at least 16 bytes).
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Bearer token that may read /metrics (publisher API keys may too; at least 16 bytes).
    #[arg(long, env = "HERALD_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Key of the operator's dashboard (`/admin`; at least 16 bytes); without it the
    /// dashboard shows nothing.
    #[arg(long, env = "HERALD_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Origins allowed by CORS, comma-separated (`*` for any).
    #[arg(long, env = "HERALD_CORS_ORIGINS")]
    pub cors_origins: Option<String>,
    /// Most open SSE connections; more get 503.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds between heartbeat comments on idle streams.
    #[arg(long, env = "HERALD_HEARTBEAT_SECS")]
    pub heartbeat_secs: Option<u64>,
    /// Base reconnect delay sent to clients in `retry:` (ms).
    #[arg(long, env = "HERALD_RETRY_MS")]
    pub retry_ms: Option<u64>,
    /// Random extra reconnect delay, 0..this (ms).
    #[arg(long, env = "HERALD_RETRY_JITTER_MS")]
    pub retry_jitter_ms: Option<u64>,
    /// Events a connection may have queued before it counts as a slow consumer.
    #[arg(long, env = "HERALD_QUEUE_CAP")]
    pub queue_cap: Option<usize>,
    /// Recent messages kept in memory per channel for fast resume.
    #[arg(long, env = "HERALD_RING_CAP")]
    pub ring_cap: Option<usize>,
    /// A stream whose queued data the peer does not take for this long is dropped (ms);
    /// checked at every heartbeat.
    #[arg(long, env = "HERALD_WRITE_TIMEOUT_MS")]
    pub write_timeout_ms: Option<u64>,
    /// Kernel send buffer of each stream's socket in bytes (0: the kernel's autotuning,
    /// which lets a peer that stops reading hold megabytes for minutes).
    #[arg(long, env = "HERALD_STREAM_SNDBUF")]
    pub stream_sndbuf: Option<usize>,
    /// Seconds an idempotency key dedupes retries.
    #[arg(long, env = "HERALD_IDEMPOTENCY_WINDOW_SECS")]
    pub idempotency_window_secs: Option<u64>,
    /// Seconds between retention sweeps.
    #[arg(long, env = "HERALD_RETENTION_SWEEP_SECS")]
    pub retention_sweep_secs: Option<u64>,
    /// Seconds over which a stopping node (SIGTERM) asks its streams to reconnect elsewhere
    /// (`herald:reconnect`), spread evenly; 0 ends them all at once. Default: 10 for
    /// `herald node`, 0 for `herald serve` (a single server has nowhere to send them).
    #[arg(long, env = "HERALD_DRAIN_SECS")]
    pub drain_secs: Option<u64>,
    /// Streams are asked to reconnect (`herald:reconnect`) after 80–100 % of this many
    /// seconds, so connections spread over the nodes again after scale-out (default: never).
    #[arg(long, env = "HERALD_MAX_CONN_LIFETIME_SECS")]
    pub max_conn_lifetime_secs: Option<u64>,
    /// Seconds a client has to send a request head (a slow or stalled client past it gets
    /// 408 `request_timeout` and is closed), and the longest a connection may carry no
    /// request; default 30.
    #[arg(long, env = "HERALD_HEAD_TIMEOUT_SECS")]
    pub head_timeout_secs: Option<u64>,
    /// Channels a node follows at most (a stream adding more gets 503
    /// `too_many_node_channels`); default 1,000,000.
    #[arg(long, env = "HERALD_MAX_NODE_CHANNELS")]
    pub max_node_channels: Option<usize>,
    /// New streams a second this process accepts (a flash crowd or reconnect storm beyond it
    /// gets 503 `overloaded` with Retry-After); 0 = no limit.
    #[arg(long, env = "HERALD_MAX_STREAM_OPENS_PER_SEC")]
    pub max_stream_opens_per_sec: Option<u32>,
    /// Open connections per client IP (more get 429 with Retry-After); 0 = no limit. Behind
    /// a proxy every client has the proxy's address: leave it off there.
    #[arg(long, env = "HERALD_MAX_CONNS_PER_IP")]
    pub max_conns_per_ip: Option<u32>,
    /// Open client connections of any kind (streams, publishes, idle or half-sent ones);
    /// a new one past it gets 503 `too_many_open_connections` and is closed. Default: the
    /// open-file limit less 128.
    #[arg(long, env = "HERALD_MAX_SOCKETS")]
    pub max_sockets: Option<usize>,
    /// PEM certificate chain: serve HTTPS (HTTP/2 and HTTP/1.1) instead of plain HTTP.
    #[arg(long, env = "HERALD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "HERALD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Fraction of publishes traced without asking (0 to 1; default 0): each hop through
    /// the cluster is recorded and `herald trace` shows the journey.
    #[arg(long, env = "HERALD_TRACE_SAMPLE")]
    pub trace_sample: Option<f64>,
    /// Traced messages each process remembers (the oldest are forgotten); default 10,000.
    #[arg(long, env = "HERALD_TRACE_KEEP")]
    pub trace_keep: Option<usize>,
    /// OpenTelemetry collector (OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318`): traced
    /// messages are also sent there as spans. Headers for the collector come from
    /// `OTEL_EXPORTER_OTLP_HEADERS`, the service name from `OTEL_SERVICE_NAME` (`herald`).
    #[arg(long, env = "HERALD_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// PEM CA bundle an `https` OTLP endpoint is checked against.
    #[arg(long, env = "HERALD_OTLP_CA")]
    pub otlp_ca: Option<PathBuf>,
    /// Milliseconds a traced message's spans wait before they are sent, so slow
    /// connections' writes make it into them; default 1000.
    #[arg(long, env = "HERALD_OTLP_DELAY_MS")]
    pub otlp_delay_ms: Option<u64>,
    /// Milliseconds between a node's subscriber counts (presence reports, occupancy
    /// events); default 1000.
    #[arg(long, env = "HERALD_PRESENCE_TICK_MS")]
    pub presence_tick_ms: Option<u64>,
    /// Allow anonymous subscribe and publish. Never use in production.
    #[arg(long, env = "HERALD_DEV")]
    pub dev: bool,
}

/// The config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub jwt_secret: Option<String>,
    pub metrics_token: Option<String>,
    pub admin_key: Option<String>,
    #[serde(default)]
    pub api_keys: Vec<ApiKeyEntry>,
    #[serde(default)]
    pub cors_origins: Vec<String>,
    pub max_connections: Option<usize>,
    pub heartbeat_secs: Option<u64>,
    pub retry_ms: Option<u64>,
    pub retry_jitter_ms: Option<u64>,
    pub queue_cap: Option<usize>,
    pub ring_cap: Option<usize>,
    pub write_timeout_ms: Option<u64>,
    pub stream_sndbuf: Option<usize>,
    pub max_batch: Option<usize>,
    pub idempotency_window_secs: Option<u64>,
    pub retention_sweep_secs: Option<u64>,
    pub shutdown_timeout_secs: Option<u64>,
    pub drain_secs: Option<u64>,
    pub max_conn_lifetime_secs: Option<u64>,
    pub head_timeout_secs: Option<u64>,
    pub max_node_channels: Option<usize>,
    pub max_stream_opens_per_sec: Option<u32>,
    pub max_conns_per_ip: Option<u32>,
    pub max_sockets: Option<usize>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub trace_sample: Option<f64>,
    pub trace_keep: Option<usize>,
    pub otlp_endpoint: Option<String>,
    pub otlp_ca: Option<PathBuf>,
    pub otlp_delay_ms: Option<u64>,
    pub presence_tick_ms: Option<u64>,
    /// `[namespaces.<name>]`; `[namespaces.default]` changes the fallback.
    #[serde(default)]
    pub namespaces: HashMap<String, NamespaceEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    pub name: String,
    pub key: String,
    /// Messages a second this key may publish (429 `rate_limited` beyond); none: no limit.
    pub rate_per_sec: Option<f64>,
    /// Messages it may publish at once above the rate (default: one second's worth).
    pub burst: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceEntry {
    pub retention_count: Option<u64>,
    pub retention_secs: Option<u64>,
    pub ephemeral_only: Option<bool>,
    pub max_payload_bytes: Option<usize>,
    pub publishers: Option<Vec<String>>,
    /// Messages a second published to this namespace, by all keys together (429
    /// `rate_limited` beyond); none: no limit.
    pub publish_rate_per_sec: Option<f64>,
    /// Messages at once above that rate (default: one second's worth).
    pub publish_burst: Option<f64>,
    /// What happens to ephemeral messages for a connection whose queue is full:
    /// `drop_oldest` (default), `drop_newest`, `conflate` or `disconnect`. Reliable
    /// messages always disconnect such a connection; it resumes from its cursor.
    pub slow_consumer: Option<String>,
    /// Subscribers get a `herald:occupancy` event (the channel's subscriber count across
    /// the cluster) when it changed, at most this often.
    pub occupancy_secs: Option<u64>,
    /// Subscribers of channels with at most 64 subscribers get `herald:join` and
    /// `herald:leave` events naming the user.
    pub presence_events: Option<bool>,
}

/// A publisher key and the name namespace rules know it by.
#[derive(Clone)]
pub struct ApiKey {
    pub name: String,
    pub key: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({}, <redacted>)", self.name)
    }
}

/// Everything `herald serve` runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub api_keys: Vec<ApiKey>,
    pub jwt_secret: Option<Secret>,
    /// Who may read /metrics besides publisher keys.
    pub metrics_token: Option<Secret>,
    /// The dashboard's key.
    pub admin_key: Option<Secret>,
    pub cors_origins: Vec<String>,
    pub dev: bool,
    pub node: herald_node::NodeConfig,
    pub dispatcher: herald_dispatcher::DispatcherConfig,
    pub max_batch: usize,
    pub shutdown_timeout: Duration,
    /// How long a connection's request head may take to arrive.
    pub head_timeout: Duration,
    /// `HERALD_DRAIN_SECS` if given; each role has its own default.
    pub drain: Option<Duration>,
    pub limits: crate::server::admission::Limits,
    /// Serve HTTPS with this, when a certificate is configured.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// Fraction of publishes traced without asking.
    pub trace_sample: f64,
    /// Traced messages remembered.
    pub trace_keep: usize,
    /// Where traced messages are sent as OpenTelemetry spans.
    pub otlp: Option<Otlp>,
}

/// The OpenTelemetry collector spans go to.
#[derive(Clone, Debug)]
pub struct Otlp {
    pub endpoint: String,
    pub ca_pem: Option<Vec<u8>>,
    pub delay: Duration,
}

/// A secret that never prints.
#[derive(Clone)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
const MIN_SECRET_LEN: usize = 16;

/// Which credentials a process needs without `--dev`: a dispatcher takes publishes (API
/// keys), a node serves streams (token secret), `serve` does both.
#[derive(Clone, Copy, Debug)]
pub struct Needs {
    pub api_keys: bool,
    pub jwt_secret: bool,
}

impl Config {
    /// The journal of this process's traced messages, given to its node and dispatcher.
    pub fn attach_journal(
        &mut self,
        process: &str,
        role: &str,
    ) -> std::sync::Arc<herald_trace::Journal> {
        let journal = match &self.otlp {
            Some(o) => herald_trace::Journal::exporting(process, role, self.trace_keep, o.delay),
            None => herald_trace::Journal::new(process, role, self.trace_keep),
        };
        self.node.journal = Some(journal.clone());
        self.dispatcher.journal = Some(journal.clone());
        journal
    }

    pub fn load(args: &ServeArgs) -> anyhow::Result<Self> {
        Self::load_for(
            args,
            Needs {
                api_keys: true,
                jwt_secret: true,
            },
        )
    }

    pub fn load_for(args: &ServeArgs, needs: Needs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let listen = match args.listen.or(file.listen) {
            Some(l) => l,
            None => DEFAULT_LISTEN.parse()?,
        };
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("herald-data"));
        let mut api_keys: Vec<ApiKey> = file
            .api_keys
            .iter()
            .map(|k| ApiKey {
                name: k.name.clone(),
                key: k.key.clone(),
            })
            .collect();
        if let Some(list) = &args.api_keys {
            api_keys.extend(parse_api_keys(list)?);
        }
        let jwt_secret = args
            .jwt_secret
            .clone()
            .or(file.jwt_secret.clone())
            .filter(|s| !s.is_empty());
        if let Some(s) = &jwt_secret {
            if s.len() < MIN_SECRET_LEN {
                bail!("HERALD_JWT_SECRET must be at least {MIN_SECRET_LEN} bytes");
            }
        }
        let metrics_token = args
            .metrics_token
            .clone()
            .or(file.metrics_token.clone())
            .filter(|s| !s.is_empty());
        if metrics_token
            .as_ref()
            .is_some_and(|t| t.len() < MIN_SECRET_LEN)
        {
            bail!("HERALD_METRICS_TOKEN must be at least {MIN_SECRET_LEN} bytes");
        }
        let admin_key = args
            .admin_key
            .clone()
            .or(file.admin_key.clone())
            .filter(|s| !s.is_empty());
        if admin_key.as_ref().is_some_and(|t| t.len() < MIN_SECRET_LEN) {
            bail!("HERALD_ADMIN_KEY must be at least {MIN_SECRET_LEN} bytes");
        }
        if !args.dev {
            if needs.api_keys && api_keys.is_empty() {
                bail!("no publisher API keys: set HERALD_API_KEYS (or api_keys in --config), or run with --dev for anonymous local use");
            }
            if needs.jwt_secret && jwt_secret.is_none() {
                bail!("no subscriber token secret: set HERALD_JWT_SECRET (or jwt_secret in --config), or run with --dev for anonymous local use");
            }
        }
        let cors_origins = match &args.cors_origins {
            Some(list) => split_list(list),
            None => file.cors_origins.clone(),
        };
        let mut node = herald_node::NodeConfig::default();
        match args.max_connections.or(file.max_connections) {
            Some(v) => node.max_connections = v,
            None => node.max_connections = node.max_connections.min(streams_below_file_limit()),
        }
        if let Some(v) = args.heartbeat_secs.or(file.heartbeat_secs) {
            node.heartbeat = Duration::from_secs(v.max(1));
        }
        if let Some(v) = args.retry_ms.or(file.retry_ms) {
            node.retry_base = Duration::from_millis(v);
        }
        if let Some(v) = args.retry_jitter_ms.or(file.retry_jitter_ms) {
            node.retry_jitter = Duration::from_millis(v);
        }
        if let Some(v) = args.queue_cap.or(file.queue_cap) {
            node.queue_cap = v.max(1);
        }
        if let Some(v) = args.ring_cap.or(file.ring_cap) {
            node.ring_cap = v;
        }
        if let Some(v) = args.write_timeout_ms.or(file.write_timeout_ms) {
            node.write_timeout = Duration::from_millis(v.max(100));
        }
        if let Some(v) = args.stream_sndbuf.or(file.stream_sndbuf) {
            node.stream_sndbuf = v;
        }
        node.max_conn_lifetime = args
            .max_conn_lifetime_secs
            .or(file.max_conn_lifetime_secs)
            .filter(|&v| v > 0)
            .map(Duration::from_secs);
        if let Some(v) = args.max_node_channels.or(file.max_node_channels) {
            node.max_node_channels = v.max(1);
        }
        node.slow_policies = slow_policies(&file.namespaces)?;
        node.presence = presence_policies(&file.namespaces);
        if let Some(ms) = args.presence_tick_ms.or(file.presence_tick_ms) {
            node.presence_tick = Duration::from_millis(ms.max(50));
        }
        let mut dispatcher = herald_dispatcher::DispatcherConfig {
            policies: policies(&file.namespaces)?,
            ..Default::default()
        };
        if let Some(v) = args
            .idempotency_window_secs
            .or(file.idempotency_window_secs)
        {
            dispatcher.idempotency_window = Duration::from_secs(v);
        }
        if let Some(v) = args.retention_sweep_secs.or(file.retention_sweep_secs) {
            dispatcher.sweep_interval = Duration::from_secs(v.max(1));
        }
        let limits = limits(args, &file)?;
        let tls = match (
            args.tls_cert.as_ref().or(file.tls_cert.as_ref()),
            args.tls_key.as_ref().or(file.tls_key.as_ref()),
        ) {
            (Some(cert), Some(key)) => Some(crate::server::tls::server_config(cert, key)?),
            (None, None) => None,
            _ => {
                bail!("TLS needs both a certificate (HERALD_TLS_CERT) and its key (HERALD_TLS_KEY)")
            }
        };
        let trace_sample = args.trace_sample.or(file.trace_sample).unwrap_or(0.0);
        if !(0.0..=1.0).contains(&trace_sample) {
            bail!("HERALD_TRACE_SAMPLE must be between 0 and 1 (got {trace_sample})");
        }
        let otlp = otlp(args, &file)?;
        let key_names: Vec<&str> = api_keys.iter().map(|k| k.name.as_str()).collect();
        for (ns, p) in &dispatcher.policies.namespaces {
            for name in p.publishers.iter().flatten() {
                if !key_names.contains(&name.as_str()) && !args.dev {
                    bail!(
                        "namespace '{ns}' names publisher '{name}', but no API key has that name"
                    );
                }
            }
        }
        Ok(Self {
            listen,
            data_dir,
            api_keys,
            jwt_secret: jwt_secret.map(|s| Secret(s.into_bytes())),
            metrics_token: metrics_token.map(|s| Secret(s.into_bytes())),
            admin_key: admin_key.map(|s| Secret(s.into_bytes())),
            cors_origins,
            dev: args.dev,
            node,
            dispatcher,
            max_batch: file.max_batch.unwrap_or(1000).max(1),
            shutdown_timeout: Duration::from_secs(file.shutdown_timeout_secs.unwrap_or(10)),
            head_timeout: Duration::from_secs(
                args.head_timeout_secs
                    .or(file.head_timeout_secs)
                    .unwrap_or(30)
                    .max(1),
            ),
            drain: args.drain_secs.or(file.drain_secs).map(Duration::from_secs),
            limits,
            tls,
            trace_sample,
            trace_keep: args.trace_keep.or(file.trace_keep).unwrap_or(10_000).max(1),
            otlp,
        })
    }

    /// The OTLP exporter of this process's traced messages, started when configured;
    /// the caller stops it (sending what is left) after the server has stopped.
    pub fn start_otlp(
        &self,
        journal: &std::sync::Arc<herald_trace::Journal>,
    ) -> anyhow::Result<Option<herald_otlp::Exporter>> {
        let Some(o) = &self.otlp else {
            return Ok(None);
        };
        let config = herald_otlp::OtlpConfig {
            endpoint: o.endpoint.clone(),
            ca_pem: o.ca_pem.clone(),
            service: std::env::var("OTEL_SERVICE_NAME")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "herald".to_owned()),
            process: journal.process().to_owned(),
            role: journal.role().to_owned(),
        };
        let exporter = herald_otlp::Exporter::start(journal.clone(), &config)?;
        tracing::info!(endpoint = %o.endpoint, "sending traced messages' spans over OTLP");
        Ok(Some(exporter))
    }
}

fn otlp(args: &ServeArgs, file: &FileConfig) -> anyhow::Result<Option<Otlp>> {
    let Some(endpoint) = args
        .otlp_endpoint
        .clone()
        .or_else(|| file.otlp_endpoint.clone())
        .filter(|e| !e.trim().is_empty())
    else {
        return Ok(None);
    };
    herald_otlp::traces_url(&endpoint)?;
    let ca_pem = match args.otlp_ca.as_ref().or(file.otlp_ca.as_ref()) {
        Some(p) => Some(
            std::fs::read(p).with_context(|| format!("reading HERALD_OTLP_CA {}", p.display()))?,
        ),
        None => None,
    };
    if endpoint.trim().starts_with("https://") && ca_pem.is_none() {
        bail!("an https HERALD_OTLP_ENDPOINT needs HERALD_OTLP_CA (the CA its certificate is checked against)");
    }
    let delay_ms = args.otlp_delay_ms.or(file.otlp_delay_ms).unwrap_or(1000);
    Ok(Some(Otlp {
        endpoint,
        ca_pem,
        delay: Duration::from_millis(delay_ms),
    }))
}

/// Streams this process can hold while file descriptors remain for the API, the store and
/// the cluster's connections: refused streams then get a clear 503 while publishes and
/// health checks still get through, instead of every accept failing.
fn streams_below_file_limit() -> usize {
    match rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        Some(files) => {
            let files = usize::try_from(files).unwrap_or(usize::MAX);
            files.saturating_sub((files / 20).max(256)).max(1)
        }
        None => usize::MAX,
    }
}

/// Client sockets this process can hold while file descriptors remain for the store, the
/// cluster's connections and the listener.
fn sockets_below_file_limit() -> usize {
    match rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        Some(files) => usize::try_from(files)
            .unwrap_or(usize::MAX)
            .saturating_sub(128),
        None => usize::MAX,
    }
}

/// Admission limits from flags, environment and the file.
fn limits(args: &ServeArgs, file: &FileConfig) -> anyhow::Result<crate::server::admission::Limits> {
    let rate =
        |what: &str, rate: Option<f64>, burst: Option<f64>| -> anyhow::Result<Option<(f64, f64)>> {
            let Some(r) = rate else {
                if burst.is_some() {
                    bail!("{what}: a burst without a rate");
                }
                return Ok(None);
            };
            if !(r.is_finite() && r > 0.0) {
                bail!("{what}: the rate must be a positive number of messages a second");
            }
            let b = burst.unwrap_or(r.max(1.0));
            if !(b.is_finite() && b >= 1.0) {
                bail!("{what}: the burst must be at least 1");
            }
            Ok(Some((r, b)))
        };
    let mut publish_per_key = HashMap::new();
    for k in &file.api_keys {
        if let Some(v) = rate(&format!("api key '{}'", k.name), k.rate_per_sec, k.burst)? {
            publish_per_key.insert(k.name.clone(), v);
        }
    }
    let mut publish_per_namespace = HashMap::new();
    for (ns, n) in &file.namespaces {
        if let Some(v) = rate(
            &format!("namespace '{ns}'"),
            n.publish_rate_per_sec,
            n.publish_burst,
        )? {
            publish_per_namespace.insert(ns.clone(), v);
        }
    }
    Ok(crate::server::admission::Limits {
        stream_opens_per_sec: args
            .max_stream_opens_per_sec
            .or(file.max_stream_opens_per_sec)
            .unwrap_or(0),
        conns_per_ip: args.max_conns_per_ip.or(file.max_conns_per_ip).unwrap_or(0),
        max_sockets: args
            .max_sockets
            .or(file.max_sockets)
            .unwrap_or_else(sockets_below_file_limit)
            .max(1),
        publish_per_key,
        publish_per_namespace,
    })
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `key` or `name:key`, comma-separated. Unnamed keys are called "default".
pub fn parse_api_keys(list: &str) -> anyhow::Result<Vec<ApiKey>> {
    split_list(list)
        .into_iter()
        .map(|item| {
            let (name, key) = match item.split_once(':') {
                Some((n, k)) => (n.to_owned(), k.to_owned()),
                None => ("default".to_owned(), item),
            };
            if key.len() < 8 {
                bail!("API key '{name}' is shorter than 8 characters");
            }
            Ok(ApiKey { name, key })
        })
        .collect()
}

fn slow_policies(
    entries: &HashMap<String, NamespaceEntry>,
) -> anyhow::Result<herald_node::SlowPolicies> {
    let mut out = herald_node::SlowPolicies::default();
    for (name, e) in entries {
        let Some(text) = &e.slow_consumer else {
            continue;
        };
        let Some(policy) = herald_node::SlowPolicy::parse(text) else {
            bail!("namespace '{name}': slow_consumer must be drop_oldest, drop_newest, conflate or disconnect, not '{text}'");
        };
        if name == "default" {
            out.default = policy;
        } else {
            out.namespaces.insert(name.clone(), policy);
        }
    }
    Ok(out)
}

/// Which namespaces get occupancy and join/leave events.
fn presence_policies(entries: &HashMap<String, NamespaceEntry>) -> herald_node::PresencePolicies {
    // Namespaces inherit what they leave unset from `[namespaces.default]`.
    let policy =
        |e: &NamespaceEntry, base: herald_node::PresencePolicy| herald_node::PresencePolicy {
            occupancy_every: e
                .occupancy_secs
                .map(Duration::from_secs)
                .or(base.occupancy_every),
            join_leave: e.presence_events.unwrap_or(base.join_leave),
        };
    let mut out = herald_node::PresencePolicies::default();
    if let Some(d) = entries.get("default") {
        out.default = policy(d, out.default);
    }
    for (name, e) in entries.iter().filter(|(n, _)| n.as_str() != "default") {
        out.namespaces.insert(name.clone(), policy(e, out.default));
    }
    out
}

/// The namespaces' settings. `[namespaces.default]` comes first, so every other namespace
/// inherits what it leaves unset from it (or from its built-in settings, for `user`),
/// whatever order the file lists them in.
fn policies(entries: &HashMap<String, NamespaceEntry>) -> anyhow::Result<Policies> {
    let mut out = Policies::default();
    let mut ordered: Vec<(&String, &NamespaceEntry)> = entries.iter().collect();
    ordered.sort_by_key(|(name, _)| (name.as_str() != "default", name.as_str()));
    for (name, e) in ordered {
        let base = if name == "default" {
            out.default.clone()
        } else {
            out.namespaces
                .get(name)
                .cloned()
                .unwrap_or_else(|| out.default.clone())
        };
        let p = NamespacePolicy {
            retention: Retention {
                max_count: e.retention_count.unwrap_or(base.retention.max_count),
                max_age: e
                    .retention_secs
                    .map(Duration::from_secs)
                    .unwrap_or(base.retention.max_age),
            },
            ephemeral_only: e.ephemeral_only.unwrap_or(base.ephemeral_only),
            max_payload: e.max_payload_bytes.unwrap_or(base.max_payload),
            publishers: e.publishers.clone().or(base.publishers),
        };
        if p.max_payload == 0 {
            bail!("namespace '{name}': max_payload_bytes must be > 0");
        }
        if name == "default" {
            out.default = p;
        } else {
            out.namespaces.insert(name.clone(), p);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_parse_named_and_plain() {
        let keys = parse_api_keys("billing:secret-one, plainkey123").unwrap();
        assert_eq!(keys[0].name, "billing");
        assert_eq!(keys[0].key, "secret-one");
        assert_eq!(keys[1].name, "default");
        assert!(parse_api_keys("short").is_err());
    }

    #[test]
    fn every_namespace_inherits_the_configured_default() {
        let mut text = String::from("[namespaces.default]\nretention_count = 5\n");
        for i in 0..20 {
            text.push_str(&format!("[namespaces.n{i}]\nephemeral_only = true\n"));
        }
        let f: FileConfig = toml::from_str(&text).unwrap();
        let p = policies(&f.namespaces).unwrap();
        for i in 0..20 {
            let ns = p.for_channel(&format!("n{i}:x"));
            assert_eq!(ns.retention.max_count, 5, "n{i}");
            assert!(ns.ephemeral_only);
        }
        assert_eq!(p.for_channel("other:x").retention.max_count, 5);
    }

    #[test]
    fn namespaces_from_file() {
        let f: FileConfig = toml::from_str(
            r#"
            [namespaces.react]
            ephemeral_only = true
            [namespaces.live]
            retention_count = 50
            retention_secs = 60
            "#,
        )
        .unwrap();
        let p = policies(&f.namespaces).unwrap();
        assert!(p.for_channel("react:1").ephemeral_only);
        assert_eq!(p.for_channel("live:1").retention.max_count, 50);
        assert_eq!(p.for_channel("user:x").retention.max_count, 10_000);
    }

    #[test]
    fn slow_consumer_policies_from_file() {
        let f: FileConfig = toml::from_str(
            r#"
            [namespaces.default]
            slow_consumer = "drop_newest"
            [namespaces.count]
            slow_consumer = "conflate"
            "#,
        )
        .unwrap();
        let p = slow_policies(&f.namespaces).unwrap();
        assert_eq!(p.for_channel("count:1"), herald_node::SlowPolicy::Conflate);
        assert_eq!(p.for_channel("live:1"), herald_node::SlowPolicy::DropNewest);
        let bad: FileConfig = toml::from_str("[namespaces.x]\nslow_consumer = \"block\"").unwrap();
        assert!(slow_policies(&bad.namespaces).is_err());
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        assert!(toml::from_str::<FileConfig>("lisen = \"x\"").is_err());
    }
}
