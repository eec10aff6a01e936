//! The HTTP server: accepts connections, serves them with hyper, and shuts down gracefully
//! (stop accepting, end streams with a jittered `retry:`, finish in-flight publishes, flush).

mod ack;
pub mod admin;
pub mod admission;
pub mod body;
pub mod cors;
pub mod error;
mod exchange;
mod history;
mod idle;
mod lean;
pub mod metrics;
mod ops;
mod presence;
mod publish;
mod router;
mod sse;
pub mod tls;
pub mod trace;

use crate::auth::Auth;
use crate::cluster::routing::Routing;
use error::ApiError;
use herald_dispatcher::Dispatcher;
use herald_fabric::Fabric;
use herald_node::Node;
use herald_store::Store;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

/// Most request header bytes hyper buffers; beyond it hyper answers 431 itself.
const MAX_HEADER_BUF: usize = 64 * 1024;
/// Headers hyper parses; requests with more than `exchange::MAX_HEADERS` get a JSON 431.
const HYPER_MAX_HEADERS: usize = 256;
/// Streams one HTTP/2 connection may have open at once (each also counts as a stream
/// against the node's caps): a browser's tabs share one connection per origin.
const H2_MAX_STREAMS: u32 = 256;
/// Most header bytes of one HTTP/2 request.
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;

/// Everything request handlers share.
pub struct State {
    /// The subscribe side; `None` in a dispatcher-only process.
    pub node: Option<Arc<Node>>,
    /// The publish side; `None` in a node-only process.
    pub dispatcher: Option<Arc<Dispatcher>>,
    pub store: Arc<dyn Store>,
    pub fabric: Arc<dyn Fabric>,
    /// Cluster dispatchers: where publishes for channels owned elsewhere go.
    pub routing: Option<Arc<Routing>>,
    pub auth: Auth,
    pub cors: cors::Cors,
    pub publish_latency: metrics::Histogram,
    pub shutting_down: AtomicBool,
    pub max_batch: usize,
    pub admission: admission::Admission,
    /// Namespace settings: which publisher keys may read a namespace's history and acks.
    pub policies: herald_dispatcher::Policies,
    /// How long a request head may take to arrive.
    pub head_timeout: Duration,
    /// Serve HTTPS (HTTP/2 and HTTP/1.1) when set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub tracing: trace::Tracing,
    /// Subscriber counts across the cluster (a node's own view; a dispatcher's from NATS).
    pub presence: Option<Arc<herald_node::presence::PresenceView>>,
}

/// What a process is made of: the roles it runs and what they share.
pub struct Parts {
    pub node: Option<Arc<Node>>,
    pub dispatcher: Option<Arc<Dispatcher>>,
    pub store: Arc<dyn Store>,
    pub fabric: Arc<dyn Fabric>,
    pub routing: Option<Arc<Routing>>,
    pub tracing: trace::Tracing,
    pub presence: Option<Arc<herald_node::presence::PresenceView>>,
}

impl State {
    /// The shared state of a process serving `config` with the given parts.
    pub fn new(config: &crate::config::Config, parts: Parts) -> Arc<Self> {
        let Parts {
            node,
            dispatcher,
            store,
            fabric,
            routing,
            tracing,
            presence,
        } = parts;
        Arc::new(Self {
            node,
            dispatcher,
            store,
            fabric,
            routing,
            auth: Auth::new(
                config.api_keys.clone(),
                config.jwt_secret.clone(),
                config.metrics_token.as_ref(),
                config.dev,
            )
            .with_admin_key(config.admin_key.as_ref()),
            cors: cors::Cors::new(&config.cors_origins),
            publish_latency: Default::default(),
            shutting_down: AtomicBool::new(false),
            max_batch: config.max_batch,
            admission: admission::Admission::new(&config.limits),
            policies: config.dispatcher.policies.clone(),
            head_timeout: config.head_timeout,
            tls: config.tls.clone().map(tokio_rustls::TlsAcceptor::from),
            tracing,
            presence,
        })
    }

    /// A publisher key reads a channel's history and acks only where it may publish.
    pub fn publisher_may_read(&self, publisher: &str, channel: &str) -> Result<(), ApiError> {
        if self.policies.for_channel(channel).may_publish(publisher) {
            return Ok(());
        }
        Err(ApiError::new(
            403,
            "publisher_not_allowed",
            format!(
                "this API key may not read namespace '{}'",
                herald_proto::namespace_of(channel)
            ),
        ))
    }

    pub fn node(&self) -> Result<&Arc<Node>, ApiError> {
        self.node.as_ref().ok_or_else(|| {
            ApiError::new(
                404,
                "not_served_here",
                "this process is a dispatcher; open streams on a node",
            )
        })
    }

    pub fn dispatcher(&self) -> Result<&Arc<Dispatcher>, ApiError> {
        self.dispatcher.as_ref().ok_or_else(|| {
            ApiError::new(
                404,
                "not_served_here",
                "this process is a connection node; publish through a dispatcher",
            )
        })
    }
}

/// Serves `listener` until `shutdown` resolves, then moves its streams off over `drain`
/// (see [`herald_node::Node::drain`]), then stops accepting and shuts down within `timeout`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
    timeout: Duration,
    drain: Duration,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    accept_until(&listener, &state, &stop_rx, &mut conns, shutdown).await;
    state.shutting_down.store(true, Ordering::Release);
    if let (Some(node), false) = (&state.node, drain.is_zero()) {
        // The listener stays open while streams move off: `/metrics` and `/readyz` (503)
        // keep answering for operators and load balancers, and a new stream gets a prompt
        // 503 `shutting_down` that sends its client elsewhere.
        accept_until(&listener, &state, &stop_rx, &mut conns, node.drain(drain)).await;
    }
    drop(listener);
    tracing::info!("shutting down: ending streams and finishing in-flight requests");
    let deadline = tokio::time::Instant::now() + timeout;
    if let Some(node) = &state.node {
        node.shutdown(timeout / 2).await;
    }
    let _ = stop_tx.send(true);
    while !conns.is_empty() {
        match tokio::time::timeout_at(deadline, conns.join_next()).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    open = conns.len(),
                    "connections still open at the deadline; closing them"
                );
                if let Some(node) = &state.node {
                    node.kill_all();
                }
                conns.abort_all();
                break;
            }
        }
    }
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    if let Some(dispatcher) = &state.dispatcher {
        dispatcher.shutdown(left.max(Duration::from_secs(1))).await;
    }
    tracing::info!("shutdown complete");
}

/// Accepts connections, each served by a task in `conns`, until `until` resolves.
async fn accept_until(
    listener: &TcpListener,
    state: &Arc<State>,
    stop: &watch::Receiver<bool>,
    conns: &mut JoinSet<()>,
    until: impl Future<Output = ()>,
) {
    tokio::pin!(until);
    loop {
        tokio::select! {
            _ = &mut until => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let slot = match state.admission.admit_connection(peer.ip()) {
                        Ok(slot) => slot,
                        Err(admission::Refusal::Sockets(e)) => {
                            lean::refuse_now(stream, &e);
                            continue;
                        }
                        Err(admission::Refusal::PerIp(e)) => {
                            conns.spawn(lean::refuse(stream, e));
                            continue;
                        }
                    };
                    let st = state.clone();
                    let stop = stop.clone();
                    conns.spawn(async move {
                        match st.tls.clone() {
                            Some(tls) => Box::pin(tls_connection(stream, tls, st, stop)).await,
                            None => connection(stream, st, stop).await,
                        }
                        drop(slot);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// One accepted connection. Its future lives as long as the connection, so it is kept
/// small for streams (most connections, most of the time): reading the first request and
/// the whole hyper path are boxed, and only a stream's own small state stays inline.
async fn connection(stream: tokio::net::TcpStream, state: Arc<State>, stop: watch::Receiver<bool>) {
    match Box::pin(lean::first_request(&state, stream)).await {
        lean::First::Done => {}
        lean::First::Stream(plan, stream, head) => plan.serve(stream, head).await,
        lean::First::Hyper(stream, prefix) => {
            cap_send_buffer(&state, &stream);
            let io = lean::Rewind::new(prefix, stream);
            Box::pin(hyper_connection(io, false, state, stop)).await
        }
    }
}

/// A TLS connection: the handshake (within the head timeout), then hyper, speaking HTTP/2
/// when the client chose it by ALPN.
async fn tls_connection(
    stream: tokio::net::TcpStream,
    tls: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
    stop: watch::Receiver<bool>,
) {
    cap_send_buffer(&state, &stream);
    let stream = match tokio::time::timeout(state.head_timeout, tls.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    hyper_connection(stream, h2, state, stop).await
}

/// Streams served through hyper get the same send-buffer cap as streams on the lean path: a
/// peer that stops reading holds that much kernel memory, not megabytes.
fn cap_send_buffer(state: &State, stream: &tokio::net::TcpStream) {
    let Some(node) = &state.node else { return };
    let bytes = node.config().stream_sndbuf;
    if bytes > 0 {
        if let Err(e) = herald_node::set_send_buffer(stream, bytes) {
            tracing::debug!(error = %e, "could not cap the connection's send buffer");
        }
    }
}

/// Serves one connection with hyper: HTTP/1.1, or HTTP/2 when `h2` (negotiated by ALPN).
/// A stream that must end while its writes are stuck ends the whole connection (`kill`);
/// under HTTP/2 the connection's other streams resume from their cursors.
async fn hyper_connection<I>(io: I, h2: bool, state: Arc<State>, mut stop: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let kill = Arc::new(Notify::new());
    let svc_kill = kill.clone();
    let head_timeout = state.head_timeout;
    let activity = Arc::new(idle::Activity::default());
    let svc_activity = activity.clone();
    let svc = service_fn(move |req| {
        let state = state.clone();
        let kill = svc_kill.clone();
        let open = svc_activity.begin();
        async move {
            let resp = router::handle(state, kill, req).await;
            Ok::<_, Infallible>(resp.map(|body| idle::Tracked::new(body, open)))
        }
    });
    // The head timeout is also how long a connection may carry no request at all.
    let mut idle_check =
        tokio::time::interval_at(tokio::time::Instant::now() + head_timeout, head_timeout);
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_buf_size(MAX_HEADER_BUF)
        .max_headers(HYPER_MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST);
    let builder = if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut stopping = *stop.borrow();
    if stopping {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = kill.notified() => return,
            _ = idle_check.tick(), if !stopping => {
                // Dropped, not shut down gracefully: an HTTP/2 goodbye waits for the peer to
                // answer a ping, which a silent peer never does; and nothing is in flight.
                if activity.idle_since_last() {
                    tracing::debug!(idle = ?head_timeout, "closing a connection that carries no request");
                    return;
                }
            }
            changed = stop.changed(), if !stopping => {
                if changed.is_err() || *stop.borrow() {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
