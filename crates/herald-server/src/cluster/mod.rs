//! Cluster roles: `herald dispatcher` (publish API, sequencing, durable writes to
//! ScyllaDB, fabric publish over NATS) and `herald node` (SSE API, fan-out, replay), plus
//! `herald migrate`, which creates or updates the ScyllaDB schema.

pub mod connecting_store;
pub mod forwarder;
pub mod leases;
pub mod routing;

use crate::config::{Config, Needs, ServeArgs};
use crate::serve::{announce, init_logging, listen, shutdown_signal};
use crate::server::{self, State};
use anyhow::{bail, Context};
use connecting_store::ConnectingStore;
use herald_dispatcher::Dispatcher;
use herald_dispatcher::Ownership;
use herald_fabric::{Fabric, NatsAuth, NatsFabric, NatsOptions};
use herald_node::presence::{PresenceView, Report};
use herald_node::Node;
use herald_store::{CqlCredentials, ScyllaOptions, ScyllaStore, Store};
use leases::Leases;
use routing::Routing;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long a stopping node takes to move its streams to the other nodes by default: 50k
/// streams then reconnect at about 5k a second.
const DEFAULT_NODE_DRAIN: Duration = Duration::from_secs(10);

/// Where the cluster's store is.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// ScyllaDB / Cassandra contact points (`host:port`), comma-separated.
    #[arg(long, env = "HERALD_CQL", value_delimiter = ',', required = true)]
    pub cql: Vec<String>,
    /// Keyspace of Herald's tables.
    #[arg(long, env = "HERALD_KEYSPACE", default_value = "herald")]
    pub keyspace: String,
    /// CQL replication map used when `migrate` creates the keyspace.
    #[arg(
        long,
        env = "HERALD_REPLICATION",
        default_value = "{'class':'SimpleStrategy','replication_factor':1}"
    )]
    pub replication: String,
    /// CQL username (with `--cql-password`).
    #[arg(long, env = "HERALD_CQL_USER", requires = "cql_password")]
    pub cql_user: Option<String>,
    /// CQL password.
    #[arg(
        long,
        env = "HERALD_CQL_PASSWORD",
        hide_env_values = true,
        requires = "cql_user"
    )]
    pub cql_password: Option<String>,
    /// PEM CA of the database nodes' certificates: connect over TLS and verify them.
    #[arg(long, env = "HERALD_CQL_TLS_CA")]
    pub cql_tls_ca: Option<PathBuf>,
}

impl StoreArgs {
    fn options(&self) -> ScyllaOptions {
        let mut o = ScyllaOptions::new(self.cql.clone(), self.keyspace.clone());
        o.replication = self.replication.clone();
        if let (Some(user), Some(password)) = (&self.cql_user, &self.cql_password) {
            o.credentials = Some(CqlCredentials {
                user: user.clone(),
                password: password.clone(),
            });
        }
        o.tls_ca = self.cql_tls_ca.clone();
        o
    }
}

/// How this process reaches NATS securely.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsSecurityArgs {
    /// NATS username (with `--nats-password`).
    #[arg(long, env = "HERALD_NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    /// NATS password.
    #[arg(
        long,
        env = "HERALD_NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    pub nats_password: Option<String>,
    /// NATS authentication token.
    #[arg(long, env = "HERALD_NATS_TOKEN", hide_env_values = true, conflicts_with_all = ["nats_user", "nats_creds"])]
    pub nats_token: Option<String>,
    /// NATS credentials file (user JWT + NKey seed).
    #[arg(long, env = "HERALD_NATS_CREDS", conflicts_with = "nats_user")]
    pub nats_creds: Option<PathBuf>,
    /// PEM CA of the NATS servers' certificates: TLS is then required.
    #[arg(long, env = "HERALD_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    /// PEM client certificate for NATS servers that verify clients (with `--nats-tls-key`).
    #[arg(long, env = "HERALD_NATS_TLS_CERT", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,
    /// PEM key of `--nats-tls-cert`.
    #[arg(long, env = "HERALD_NATS_TLS_KEY", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,
}

impl NatsSecurityArgs {
    fn apply(&self, o: &mut NatsOptions) {
        o.auth = match (
            &self.nats_user,
            &self.nats_password,
            &self.nats_token,
            &self.nats_creds,
        ) {
            (Some(user), Some(password), _, _) => NatsAuth::UserPassword {
                user: user.clone(),
                password: password.clone(),
            },
            (_, _, Some(t), _) => NatsAuth::Token(t.clone()),
            (_, _, _, Some(p)) => NatsAuth::CredentialsFile(p.clone()),
            _ => NatsAuth::None,
        };
        o.tls_ca = self.nats_tls_ca.clone();
        o.tls_client = self.nats_tls_cert.clone().zip(self.nats_tls_key.clone());
    }
}

/// Flags of `herald migrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Flags of `herald dispatcher` and `herald node`.
#[derive(Debug, Clone, clap::Args)]
pub struct RoleArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// NATS server URLs, comma-separated.
    #[arg(long, env = "HERALD_NATS_URL", value_delimiter = ',', required = true)]
    pub nats: Vec<String>,
    #[command(flatten)]
    pub nats_security: NatsSecurityArgs,
    /// This process's name in the cluster (default: random).
    #[arg(long, env = "HERALD_NODE_ID")]
    pub id: Option<String>,
    /// `host:port` other dispatchers reach this one at (default: the listen address).
    #[arg(long, env = "HERALD_ADVERTISE")]
    pub advertise: Option<String>,
    /// A dispatcher's lease: one that stops renewing it (killed, paused, cut off) loses its
    /// partitions about this long after its last renewal; it renews every third of it.
    #[arg(long, env = "HERALD_MEMBERSHIP_TTL_MS", default_value_t = 5000)]
    pub membership_ttl_ms: u64,
    /// Shared by the dispatchers of a cluster to forward publishes to each other.
    #[arg(long, env = "HERALD_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// PEM CA of the dispatchers' certificates: they serve TLS (`--tls-cert`) and forward
    /// publishes to each other over HTTPS, verifying each other against it.
    #[arg(long, env = "HERALD_CLUSTER_TLS_CA")]
    pub cluster_tls_ca: Option<PathBuf>,
}

pub fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    init_logging();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let opts = args.store.options();
        let store = ScyllaStore::connect_unchecked(opts)
            .await
            .with_context(|| format!("connecting to {}", args.store.cql.join(",")))?;
        store
            .migrate()
            .await
            .with_context(|| format!("migrating keyspace {}", args.store.keyspace))?;
        println!("keyspace {} is up to date", args.store.keyspace);
        Ok(())
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Dispatcher,
    Node,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Dispatcher => "dispatcher",
            Role::Node => "node",
        }
    }
}

pub fn run(role: Role, args: RoleArgs) -> anyhow::Result<()> {
    init_logging();
    let needs = Needs {
        api_keys: role == Role::Dispatcher,
        jwt_secret: role == Role::Node,
    };
    let config = Config::load_for(&args.serve, needs)?;
    if args.cluster_tls_ca.is_some() && config.tls.is_none() && role == Role::Dispatcher {
        bail!("HERALD_CLUSTER_TLS_CA: the dispatchers forward over HTTPS, so each must serve it (HERALD_TLS_CERT and HERALD_TLS_KEY)");
    }
    if config.dev {
        crate::serve::dev_banner();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve_role(role, args, config))
}

async fn serve_role(role: Role, args: RoleArgs, mut config: Config) -> anyhow::Result<()> {
    let secret = match (&args.cluster_secret, role, config.dev) {
        (Some(s), _, _) if s.len() >= 16 => s.clone(),
        (Some(_), _, _) => bail!("HERALD_CLUSTER_SECRET must be at least 16 bytes"),
        (None, Role::Node, _) => String::new(),
        (None, Role::Dispatcher, true) => "herald-dev-cluster-secret".to_owned(),
        (None, Role::Dispatcher, false) => bail!(
            "no cluster secret: set HERALD_CLUSTER_SECRET (the same on every dispatcher) so dispatchers can forward publishes, or run with --dev"
        ),
    };
    let listener = listen(config.listen).with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let id = args.id.clone().unwrap_or_else(|| {
        format!(
            "{}-{}-{:08x}",
            role.name(),
            std::process::id(),
            rand::random::<u32>()
        )
    });
    let journal = config.attach_journal(&id, role.name());
    config.node.name = id.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (store, connect_task) = ConnectingStore::start(args.store.options(), stop_rx.clone());
    let mut nats = NatsOptions::new(args.nats.clone());
    nats.name = format!("herald-{id}");
    args.nats_security.apply(&mut nats);
    let (fabric, incoming) = NatsFabric::connect(nats)
        .await
        .context("setting up the NATS fabric")?;
    let fabric = Arc::new(fabric);
    let dyn_store: Arc<dyn Store> = store.clone();
    let dyn_fabric: Arc<dyn Fabric> = fabric.clone();
    let mut tasks = vec![connect_task];
    let (node, dispatcher, routing) = match role {
        Role::Node => {
            let node = Node::start(
                dyn_store.clone(),
                dyn_fabric.clone(),
                incoming,
                config.node.clone(),
            );
            (Some(node), None, None)
        }
        Role::Dispatcher => {
            // A dispatcher only publishes to the fabric; what it would receive is dropped.
            drop(incoming);
            let advertise = args.advertise.clone().unwrap_or_else(|| addr.to_string());
            let leases = Leases::new(
                id.clone(),
                advertise,
                Duration::from_millis(args.membership_ttl_ms.max(300)),
            );
            let ownership: Arc<dyn Ownership> = leases.clone();
            let dispatcher = Dispatcher::start(
                dyn_store.clone(),
                dyn_fabric.clone(),
                config.dispatcher.clone(),
                Some(ownership),
            );
            tasks.push(tokio::spawn(
                leases.clone().run(store.clone(), stop_rx.clone()),
            ));
            let routing = Arc::new(Routing::new(
                leases,
                secret,
                args.cluster_tls_ca.as_deref(),
                journal.clone(),
            )?);
            (None, Some(dispatcher), Some(routing))
        }
    };
    let otlp = config.start_otlp(&journal)?;
    let tracing =
        server::trace::Tracing::new(journal, config.trace_sample, Some((*fabric).clone()))
            .with_otlp(otlp.as_ref());
    tracing
        .answer_peers()
        .await
        .context("answering trace questions over NATS")?;
    let presence = listen_presence(&fabric, node.as_ref(), config.node.presence_tick)
        .await
        .context("hearing presence reports over NATS")?;
    let parts = server::Parts {
        node,
        dispatcher,
        store: dyn_store,
        fabric: dyn_fabric,
        routing,
        tracing,
        presence: Some(presence),
    };
    let state = State::new(&config, parts);
    let figures = std::sync::Arc::downgrade(&state);
    fabric
        .answer(
            server::admin::TOPIC,
            Arc::new(move |_| figures.upgrade().and_then(|s| server::admin::answer(&s))),
        )
        .await
        .context("answering the dashboard's questions over NATS")?;
    tracing::info!(%addr, %id, role = role.name(), keyspace = %args.store.keyspace, "herald {} serving", role.name());
    announce(addr, config.tls.is_some());
    // Background tasks stop as soon as shutdown starts: a dispatcher leaves the membership
    // first, so the others stop forwarding to it while it finishes its in-flight publishes.
    let shutdown = async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    };
    let drain = match role {
        Role::Node => config.drain.unwrap_or(DEFAULT_NODE_DRAIN),
        Role::Dispatcher => Duration::ZERO,
    };
    server::serve(listener, state, shutdown, config.shutdown_timeout, drain).await;
    for t in tasks {
        if tokio::time::timeout(Duration::from_secs(3), t)
            .await
            .is_err()
        {
            tracing::warn!("a background task did not stop in time");
        }
    }
    if let Some(otlp) = otlp {
        otlp.stop().await;
    }
    fabric.shutdown().await;
    Ok(())
}

/// The NATS topic of presence reports.
const PRESENCE: &str = "presence";

/// Wires presence over NATS: a node tells its reports to every process; every process
/// (dispatchers too, for `GET /v1/channels/{ch}/presence`) hears them into its view.
async fn listen_presence(
    fabric: &NatsFabric,
    node: Option<&Arc<Node>>,
    tick: Duration,
) -> anyhow::Result<Arc<PresenceView>> {
    let view = match node {
        Some(n) => {
            let teller = fabric.teller(PRESENCE);
            n.set_gossip(Arc::new(move |report: &Report| {
                if let Ok(bytes) = serde_json::to_vec(report) {
                    teller.tell(bytes.into());
                }
            }));
            n.presence().clone()
        }
        None => Arc::new(PresenceView::new(tick)),
    };
    let hear = view.clone();
    fabric
        .listen(
            PRESENCE,
            Arc::new(move |bytes: bytes::Bytes| {
                if let Ok(report) = serde_json::from_slice::<Report>(&bytes) {
                    hear.heard(report);
                }
            }),
        )
        .await?;
    Ok(view)
}
