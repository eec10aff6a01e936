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
use herald_fabric::{Fabric, NatsFabric, NatsOptions};
use herald_node::Node;
use herald_store::{ScyllaOptions, ScyllaStore, Store};
use leases::Leases;
use routing::Routing;
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
}

impl StoreArgs {
    fn options(&self) -> ScyllaOptions {
        let mut o = ScyllaOptions::new(self.cql.clone(), self.keyspace.clone());
        o.replication = self.replication.clone();
        o
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
    if config.dev {
        crate::serve::dev_banner();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve_role(role, args, config))
}

async fn serve_role(role: Role, args: RoleArgs, config: Config) -> anyhow::Result<()> {
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
    let (stop_tx, stop_rx) = watch::channel(false);
    let (store, connect_task) = ConnectingStore::start(args.store.options(), stop_rx.clone());
    let mut nats = NatsOptions::new(args.nats.clone());
    nats.name = format!("herald-{id}");
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
            let routing = Arc::new(Routing::new(leases, secret)?);
            (None, Some(dispatcher), Some(routing))
        }
    };
    let state = State::new(&config, node, dispatcher, dyn_store, dyn_fabric, routing);
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
    fabric.shutdown().await;
    Ok(())
}
