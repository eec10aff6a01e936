//! `herald serve`: wires store, fabric, dispatcher and node into one process.

use crate::config::{Config, ServeArgs};
use crate::server::{self, State};
use anyhow::Context;
use herald_dispatcher::Dispatcher;
use herald_fabric::Fabric;
use herald_node::Node;
use herald_store::{FjallOptions, FjallStore, Store};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

/// Messages in flight from the sequencer to the node's fan-out loop.
const FABRIC_QUEUE: usize = 65_536;

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
    let config = Config::load(&args)?;
    if config.dev {
        dev_banner();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(mut config: Config) -> anyhow::Result<()> {
    let journal = config.attach_journal("serve", "serve");
    let store: Arc<dyn Store> = Arc::new(
        FjallStore::open(FjallOptions::new(&config.data_dir))
            .with_context(|| format!("opening the store in {}", config.data_dir.display()))?,
    );
    let (fabric, incoming) = herald_fabric::in_process(FABRIC_QUEUE);
    let fabric: Arc<dyn Fabric> = Arc::new(fabric);
    let node = Node::start(store.clone(), fabric.clone(), incoming, config.node.clone());
    let dispatcher = Dispatcher::start(
        store.clone(),
        fabric.clone(),
        config.dispatcher.clone(),
        None,
    );
    let listener = listen(config.listen).with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let otlp = config.start_otlp(&journal)?;
    let tracing =
        server::trace::Tracing::new(journal, config.trace_sample, None).with_otlp(otlp.as_ref());
    // With presence events on, the node's own reports feed its view; else the endpoint
    // reads the node's slots when asked.
    let presence = config.node.presence.any().then(|| node.presence().clone());
    let parts = server::Parts {
        node: Some(node),
        dispatcher: Some(dispatcher),
        store,
        fabric,
        routing: None,
        tracing,
        presence,
    };
    let state = State::new(&config, parts);
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "herald serving");
    announce(addr, config.tls.is_some());
    server::serve(
        listener,
        state,
        shutdown_signal(),
        config.shutdown_timeout,
        config.drain.unwrap_or(Duration::ZERO),
    )
    .await;
    if let Some(otlp) = otlp {
        otlp.stop().await;
    }
    Ok(())
}

/// Connections waiting to be accepted; reconnect storms of thousands of clients arrive at
/// once, and a short queue turns them into SYN retries a second later.
const LISTEN_BACKLOG: u32 = 8192;

/// Says loudly that `--dev` turned security off.
pub fn dev_banner() {
    let banner = "WARNING: --dev: anyone can subscribe to any channel and publish without a key. Never expose this server.";
    eprintln!("{banner}");
    tracing::warn!("{banner}");
}

/// Prints the address served; scripts and tests read this line to learn the port when
/// listening on :0.
pub fn announce(addr: std::net::SocketAddr, tls: bool) {
    let scheme = if tls { "https" } else { "http" };
    println!("herald listening on {scheme}://{addr}");
    let _ = std::io::stdout().flush();
}

pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
