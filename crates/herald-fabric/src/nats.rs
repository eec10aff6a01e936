//! The cluster fabric over NATS core subjects: dispatchers publish each message to its
//! channel's subject, nodes subscribe to the subjects of the channels they have subscribers
//! for (interest-based routing). NATS core is at-most-once; whenever delivery may have had a
//! hole (a new subscription, a reconnect) the node is told to re-check against the store.

use crate::{codec, Fabric, FabricError, FabricMessage, Incoming};
use async_nats::{Client, ConnectOptions, Event, ServerAddr, Subject, Subscriber};
use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{AbortHandle, Abortable, SelectAll, Stream, StreamExt};
use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{timeout, timeout_at, Instant};
use tracing::{debug, info, warn};

/// Upper bound of one `publish` call, so a dispatcher never stalls long on a sick fabric.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for the server to confirm subscriptions before trying again.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(5);
const BARRIER_RETRY: Duration = Duration::from_secs(1);
/// Each step of `shutdown` waits at most this long.
const SHUTDOWN_STEP: Duration = Duration::from_secs(2);
/// Safety net for a connection event the client failed to report.
const TICK: Duration = Duration::from_secs(1);
const EVENT_QUEUE: usize = 256;

/// How to reach NATS.
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// Server URLs (`nats://host:4222`, `host:4222`, `tls://…`); the client picks among them.
    pub urls: Vec<String>,
    /// First tokens of every subject Herald uses (default `herald`), so several deployments
    /// can share one NATS cluster.
    pub subject_prefix: String,
    /// Client name shown by the server's monitoring (default `herald`).
    pub name: String,
    /// Capacity of the queue of [`Incoming`] items handed to the node.
    pub incoming_capacity: usize,
    /// How Herald proves itself to NATS.
    pub auth: NatsAuth,
    /// PEM file of the CA that signs the NATS servers' certificates; set, TLS is required
    /// (and it is the only trusted root).
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate and key, for servers that verify their clients (mutual TLS).
    pub tls_client: Option<(PathBuf, PathBuf)>,
}

/// The credential presented to NATS.
#[derive(Clone, Default)]
pub enum NatsAuth {
    #[default]
    None,
    Token(String),
    UserPassword {
        user: String,
        password: String,
    },
    /// A `.creds` file (a user JWT and its NKey seed).
    CredentialsFile(PathBuf),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::Token(_) => f.write_str("Token(<redacted>)"),
            NatsAuth::UserPassword { user, .. } => write!(f, "UserPassword({user}, <redacted>)"),
            NatsAuth::CredentialsFile(p) => write!(f, "CredentialsFile({})", p.display()),
        }
    }
}

impl NatsOptions {
    pub fn new<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        NatsOptions {
            urls: urls.into_iter().map(Into::into).collect(),
            subject_prefix: "herald".to_owned(),
            name: "herald".to_owned(),
            incoming_capacity: 65_536,
            auth: NatsAuth::None,
            tls_ca: None,
            tls_client: None,
        }
    }
}

/// Counters of one [`NatsFabric`] since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatsStats {
    /// Messages handed to the NATS client by `publish`.
    pub published: u64,
    /// Messages `publish` failed to hand over (error or timeout).
    pub publish_errors: u64,
    /// Messages received on subscriptions.
    pub received: u64,
    /// Received payloads that were not valid fabric messages (dropped).
    pub decode_errors: u64,
    /// Ephemeral messages dropped: the node's queue was full, or NATS could not take them.
    pub dropped_ephemeral: u64,
    /// Connections re-established after a loss.
    pub reconnects: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    publish_errors: AtomicU64,
    received: AtomicU64,
    decode_errors: AtomicU64,
    dropped_ephemeral: AtomicU64,
    reconnects: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

#[derive(Debug, Error)]
enum NatsError {
    #[error("no NATS server URL configured")]
    NoUrls,
    #[error("invalid NATS server URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error(
        "invalid NATS subject prefix {0:?}: use dot-separated tokens without spaces, '*' or '>'"
    )]
    Prefix(String),
    #[error("NATS TLS setting {path}: {reason}")]
    Tls { path: String, reason: String },
    #[error("reading the NATS credentials file {path}: {reason}")]
    Credentials { path: String, reason: String },
    #[error("starting the NATS client: {0}")]
    Connect(#[from] async_nats::ConnectError),
    #[error("publishing to NATS: {0}")]
    Publish(#[from] async_nats::PublishError),
    #[error("publishing to NATS timed out after {0:?} (is the server reachable?)")]
    PublishTimeout(Duration),
}

impl From<NatsError> for FabricError {
    fn from(e: NatsError) -> Self {
        FabricError::Unavailable(e.to_string())
    }
}

/// State shared by the handles, the manager task and the client's event callback.
struct Shared {
    ready: AtomicBool,
    closed: AtomicBool,
    counters: Counters,
    /// Latest wanted interest per channel, not yet applied by the manager. A map rather than
    /// a queue: it is bounded by the number of channels, never loses a change, and folds a
    /// channel that flaps on and off into its final state.
    interest: Mutex<HashMap<Arc<str>, bool>>,
    interest_changed: Notify,
}

/// The NATS fabric. Cheap to clone; the manager task ends with [`NatsFabric::shutdown`] or
/// when the last clone is dropped.
#[derive(Clone)]
pub struct NatsFabric {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) prefix: String,
    shared: Arc<Shared>,
    pub(crate) stop: watch::Sender<bool>,
    manager: Mutex<Option<JoinHandle<()>>>,
    /// Tasks answering cluster questions; they end when `stop` is sent.
    answerers: Mutex<Vec<JoinHandle<()>>>,
}

impl Inner {
    /// Keeps a task that ends with the fabric.
    pub(crate) fn own(&self, task: JoinHandle<()>) {
        let mut tasks = self
            .answerers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Adds the credential and TLS settings of `opts`.
async fn security(mut c: ConnectOptions, opts: &NatsOptions) -> Result<ConnectOptions, NatsError> {
    c = match &opts.auth {
        NatsAuth::None => c,
        NatsAuth::Token(t) => c.token(t.clone()),
        NatsAuth::UserPassword { user, password } => {
            c.user_and_password(user.clone(), password.clone())
        }
        NatsAuth::CredentialsFile(path) => {
            c.credentials_file(path)
                .await
                .map_err(|e| NatsError::Credentials {
                    path: path.display().to_string(),
                    reason: e.kind().to_string(),
                })?
        }
    };
    if opts.tls_ca.is_some() || opts.tls_client.is_some() {
        c = c.tls_client_config(tls_config(opts)?).require_tls(true);
    }
    Ok(c)
}

/// The client side of TLS to NATS, with the ring provider named here rather than taken from
/// the process default (which is ambiguous when several providers are linked in).
fn tls_config(opts: &NatsOptions) -> Result<rustls::ClientConfig, NatsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |path: &PathBuf, reason: String| NatsError::Tls {
        path: path.display().to_string(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &opts.tls_ca {
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(ca, e.to_string()))? {
            let cert = cert.map_err(|e| bad(ca, e.to_string()))?;
            roots.add(cert).map_err(|e| bad(ca, e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad(ca, "no certificate in it".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| NatsError::Tls {
            path: "protocol versions".into(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots);
    match &opts.tls_client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| bad(cert, e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(cert, e.to_string()))?;
            // The key's own error may quote its bytes: say which file only.
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|_| bad(key, "no usable private key".into()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| bad(cert, e.to_string()))
        }
    }
}

impl NatsFabric {
    /// Starts the NATS client and the subscription manager; returns at once, without waiting
    /// for a server: the client connects (and reconnects) in the background with backoff, and
    /// [`Fabric::is_ready`] says whether it is connected. Must be called inside a Tokio runtime.
    pub async fn connect(
        opts: NatsOptions,
    ) -> Result<(NatsFabric, mpsc::Receiver<Incoming>), FabricError> {
        if opts.urls.is_empty() {
            return Err(NatsError::NoUrls.into());
        }
        if !valid_prefix(&opts.subject_prefix) {
            return Err(NatsError::Prefix(opts.subject_prefix).into());
        }
        let addrs = opts
            .urls
            .iter()
            .map(|u| {
                u.parse::<ServerAddr>().map_err(|e| NatsError::Url {
                    url: u.clone(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let shared = Arc::new(Shared {
            ready: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            counters: Counters::default(),
            interest: Mutex::new(HashMap::new()),
            interest_changed: Notify::new(),
        });
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let cb_shared = shared.clone();
        let client = security(ConnectOptions::new(), &opts)
            .await?
            .name(&opts.name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback(move |event| {
                let shared = cb_shared.clone();
                let events = events_tx.clone();
                async move {
                    match event {
                        Event::Connected => shared.ready.store(true, Relaxed),
                        Event::Disconnected | Event::Closed => shared.ready.store(false, Relaxed),
                        _ => {}
                    }
                    // Logging and resyncs happen in the manager, which can ask the client
                    // which server it was on; a lost event is caught by its periodic check.
                    let _ = events.try_send(event);
                }
            })
            .connect(addrs)
            .await
            .map_err(NatsError::from)?;

        let (incoming_tx, incoming_rx) = mpsc::channel(opts.incoming_capacity.max(1));
        let (stop_tx, stop_rx) = watch::channel(false);
        let manager = Manager {
            client: client.clone(),
            prefix: opts.subject_prefix.clone(),
            urls: opts.urls.join(","),
            shared: shared.clone(),
            incoming: incoming_tx,
            stop: stop_rx,
            subs: HashMap::new(),
            streams: SelectAll::new(),
            next_gen: 0,
            unconfirmed: Vec::new(),
            resync_all: false,
            retry_at: None,
            barrier: None,
            barrier_subject: String::new(),
            barrier_token: 0,
            seen_connects: 0,
            warned_unreachable: false,
        };
        let handle = tokio::spawn(manager.run(events_rx));
        let fabric = NatsFabric {
            inner: Arc::new(Inner {
                client,
                prefix: opts.subject_prefix,
                shared,
                stop: stop_tx,
                manager: Mutex::new(Some(handle)),
                answerers: Mutex::new(Vec::new()),
            }),
        };
        Ok((fabric, incoming_rx))
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// Counters since creation.
    pub fn stats(&self) -> NatsStats {
        let c = &self.inner.shared.counters;
        NatsStats {
            published: c.published.load(Relaxed),
            publish_errors: c.publish_errors.load(Relaxed),
            received: c.received.load(Relaxed),
            decode_errors: c.decode_errors.load(Relaxed),
            dropped_ephemeral: c.dropped_ephemeral.load(Relaxed),
            reconnects: c.reconnects.load(Relaxed),
        }
    }

    /// Stops the manager, pushes out what `publish` queued and closes the connection. Takes
    /// at most a few seconds however NATS behaves; later publishes fail with `Closed`.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        if inner.shared.closed.swap(true, Relaxed) {
            return;
        }
        inner.stop.send_replace(true);
        let answerers: Vec<JoinHandle<()>> = std::mem::take(
            &mut *inner
                .answerers
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for mut t in answerers {
            if timeout(SHUTDOWN_STEP, &mut t).await.is_err() {
                t.abort();
            }
        }
        let handle = inner
            .manager
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut handle) = handle {
            if timeout(SHUTDOWN_STEP, &mut handle).await.is_err() {
                warn!("NATS fabric manager did not stop within {SHUTDOWN_STEP:?}; aborting it");
                handle.abort();
            }
        }
        if inner.shared.ready.load(Relaxed) {
            match timeout(SHUTDOWN_STEP, inner.client.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(error = %e, "NATS flush at shutdown failed"),
                Err(_) => debug!("NATS flush at shutdown timed out"),
            }
        }
        match timeout(SHUTDOWN_STEP, inner.client.drain()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, "NATS drain at shutdown failed"),
            Err(_) => debug!("NATS drain at shutdown timed out"),
        }
        inner.shared.ready.store(false, Relaxed);
    }
}

#[async_trait]
impl Fabric for NatsFabric {
    async fn publish(&self, messages: Vec<FabricMessage>) -> Result<(), FabricError> {
        let inner = &self.inner;
        let counters = &inner.shared.counters;
        if inner.shared.closed.load(Relaxed) {
            return Err(FabricError::Closed);
        }
        let deadline = Instant::now() + PUBLISH_TIMEOUT;
        let mut last: Option<(&str, Subject)> = None;
        for m in &messages {
            let subject = match &last {
                Some((channel, subject)) if *channel == &*m.channel => subject.clone(),
                _ => {
                    let s = Subject::from(channel_subject(&inner.prefix, &m.channel));
                    last = Some((&m.channel, s.clone()));
                    s
                }
            };
            // `publish` only waits for room in the client's queue, which fills while the
            // server is unreachable; past the deadline it still succeeds whenever there is room.
            let result =
                timeout_at(deadline, inner.client.publish(subject, codec::encode(m))).await;
            let error = match result {
                Ok(Ok(())) => {
                    bump(&counters.published);
                    continue;
                }
                Ok(Err(e)) => NatsError::Publish(e),
                Err(_) => NatsError::PublishTimeout(PUBLISH_TIMEOUT),
            };
            if m.is_ephemeral() {
                // Best effort: an ephemeral message is not worth failing the batch for.
                bump(&counters.dropped_ephemeral);
                continue;
            }
            bump(&counters.publish_errors);
            return Err(error.into());
        }
        Ok(())
    }

    fn set_interest(&self, channel: &str, interested: bool) {
        let shared = &self.inner.shared;
        if shared.closed.load(Relaxed) {
            return;
        }
        shared
            .interest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(Arc::from(channel), interested);
        shared.interest_changed.notify_one();
    }

    fn is_ready(&self) -> bool {
        let shared = &self.inner.shared;
        shared.ready.load(Relaxed) && !shared.closed.load(Relaxed)
    }
}

/// `{prefix}.c.{base64url(channel)}`: channel names may hold '.', '*', '>' or spaces, which
/// mean something in a subject. The empty name gets `=`, which base64url never produces.
fn channel_subject(prefix: &str, channel: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 3 + channel.len().div_ceil(3) * 4);
    s.push_str(prefix);
    s.push_str(".c.");
    if channel.is_empty() {
        s.push('=');
    } else {
        URL_SAFE_NO_PAD.encode_string(channel, &mut s);
    }
    s
}

fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.split('.').all(|token| {
            !token.is_empty()
                && token
                    .chars()
                    .all(|c| !c.is_whitespace() && !c.is_control() && c != '*' && c != '>')
        })
}

/// One subscription's messages, tagged with the channel they belong to. Aborting it ends the
/// stream, so `SelectAll` drops it and the dropped `Subscriber` unsubscribes.
struct Tagged {
    channel: Arc<str>,
    inner: Abortable<Subscriber>,
}

impl Stream for Tagged {
    type Item = (Arc<str>, async_nats::Message);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        Pin::new(&mut this.inner)
            .poll_next(cx)
            .map(|m| m.map(|m| (this.channel.clone(), m)))
    }
}

struct Sub {
    /// Tells a confirmation apart from one meant for an earlier subscription of the channel.
    generation: u64,
    abort: AbortHandle,
}

/// A barrier in flight and the resyncs it releases once it passed.
struct PendingBarrier {
    /// Gives the barrier subscription back, and whether the barrier passed.
    done: BoxFuture<'static, (Option<Subscriber>, bool)>,
    channels: Vec<(Arc<str>, u64)>,
    all: bool,
}

/// The one task that owns the subscriptions and feeds the node.
struct Manager {
    client: Client,
    prefix: String,
    urls: String,
    shared: Arc<Shared>,
    incoming: mpsc::Sender<Incoming>,
    stop: watch::Receiver<bool>,
    subs: HashMap<Arc<str>, Sub>,
    // SelectAll polls only the subscriptions that woke it (a StreamMap scans them all).
    streams: SelectAll<Tagged>,
    next_gen: u64,
    /// Subscriptions asked for whose activation on the server is not yet confirmed.
    unconfirmed: Vec<(Arc<str>, u64)>,
    /// A reconnect happened: every channel needs a resync once the subscriptions are back.
    resync_all: bool,
    retry_at: Option<Instant>,
    /// A subscription to a private inbox. The server handles one connection's operations in
    /// order, so our own message on it coming back proves every earlier SUB is active.
    /// (`Client::flush` only flushes the socket; it waits for no answer.)
    barrier: Option<Subscriber>,
    barrier_subject: String,
    barrier_token: u64,
    seen_connects: u64,
    warned_unreachable: bool,
}

impl Manager {
    async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        self.barrier_subject = self.client.new_inbox();
        match self.client.subscribe(self.barrier_subject.clone()).await {
            Ok(sub) => self.barrier = Some(sub),
            Err(e) => {
                warn!(error = %e, "NATS barrier subscription failed; subscription resyncs may come early")
            }
        }
        let mut pending: Option<PendingBarrier> = None;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if pending.is_none() {
                pending = self.start_barrier();
            }
            tokio::select! {
                biased;
                _ = stopped(&mut self.stop) => break,
                Some(event) = events.recv() => self.on_event(event),
                _ = self.shared.interest_changed.notified() => {
                    if !self.apply_interest().await {
                        break;
                    }
                }
                (sub, passed) = async {
                    match pending.as_mut() {
                        Some(b) => b.done.as_mut().await,
                        None => std::future::pending().await,
                    }
                }, if pending.is_some() => {
                    if let Some(b) = pending.take() {
                        if !self.barrier_done(b, sub, passed).await {
                            break;
                        }
                    }
                }
                Some((channel, msg)) = self.streams.next() => {
                    if !self.forward(channel, msg).await {
                        break;
                    }
                }
                _ = tick.tick() => self.check_connects(),
            }
        }
        debug!("NATS fabric manager stopped");
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected => {
                self.warned_unreachable = false;
                self.check_connects();
            }
            Event::Disconnected => {
                self.warned_unreachable = true;
                warn!(
                    server = %self.server(),
                    urls = %self.urls,
                    "lost the NATS connection; reconnecting in the background \
                     (messages published meanwhile are repaired from the store)"
                );
            }
            Event::ClientError(e) if !self.shared.ready.load(Relaxed) => {
                // Every failed attempt reports one; say it once per outage.
                if !self.warned_unreachable {
                    self.warned_unreachable = true;
                    warn!(urls = %self.urls, error = %e, "cannot reach NATS yet; retrying in the background");
                } else {
                    debug!(urls = %self.urls, error = %e, "NATS connection attempt failed");
                }
            }
            Event::SlowConsumer(sid) => warn!(
                sid,
                "a NATS subscription overflowed and the client dropped messages \
                 (nodes repair reliable ones from the store)"
            ),
            Event::ServerError(e) => warn!(error = %e, "NATS server error"),
            other => debug!(event = %other, "NATS client event"),
        }
    }

    fn server(&self) -> String {
        let info = self.client.server_info();
        if info.host.is_empty() {
            "(none yet)".to_owned()
        } else {
            format!("{}:{}", info.host, info.port)
        }
    }

    /// Counts connections from the client's own statistics, so a reconnect is never missed
    /// even if its event was.
    fn check_connects(&mut self) {
        let connects = self.client.statistics().connects.load(Relaxed);
        if connects <= self.seen_connects {
            return;
        }
        let again = connects - self.seen_connects.max(1);
        self.seen_connects = connects;
        if again == 0 {
            info!(server = %self.server(), "connected to NATS");
            return;
        }
        self.shared.counters.reconnects.fetch_add(again, Relaxed);
        self.resync_all = true;
        info!(
            server = %self.server(),
            "reconnected to NATS; re-checking every channel against the store"
        );
    }

    /// Applies the interest changes made since the last call; false when the fabric stops
    /// meanwhile (subscribing waits for room in the client's queue, which fills during an
    /// outage).
    async fn apply_interest(&mut self) -> bool {
        let changes = std::mem::take(
            &mut *self
                .shared
                .interest
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (channel, interested) in changes {
            if !interested {
                if let Some(sub) = self.subs.remove(&channel) {
                    sub.abort.abort();
                }
                continue;
            }
            if !self.subs.contains_key(&channel) {
                let subject = channel_subject(&self.prefix, &channel);
                let subscribed = tokio::select! {
                    r = self.client.subscribe(subject.clone()) => r,
                    _ = stopped(&mut self.stop) => return false,
                };
                match subscribed {
                    Ok(subscriber) => {
                        let (abort, registration) = AbortHandle::new_pair();
                        self.next_gen += 1;
                        self.streams.push(Tagged {
                            channel: channel.clone(),
                            inner: Abortable::new(subscriber, registration),
                        });
                        self.subs.insert(
                            channel.clone(),
                            Sub {
                                generation: self.next_gen,
                                abort,
                            },
                        );
                    }
                    Err(e) => {
                        warn!(%channel, %subject, error = %e, "NATS subscribe failed");
                        continue;
                    }
                }
            }
            // Also when already subscribed: the node asked, so it waits for its resync.
            if let Some(sub) = self.subs.get(&channel) {
                self.unconfirmed.push((channel, sub.generation));
            }
        }
        true
    }

    /// Starts a barrier when resyncs wait for one; once it passed, a store read after the
    /// resync misses nothing the subscriptions would not bring.
    fn start_barrier(&mut self) -> Option<PendingBarrier> {
        if self.unconfirmed.is_empty() && !self.resync_all {
            return None;
        }
        // Before a (re)connection a barrier would only sit in the client's queue; the
        // connect event (or the tick) brings us back here.
        if !self.shared.ready.load(Relaxed) || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        self.retry_at = None;
        let client = self.client.clone();
        let done: BoxFuture<'static, (Option<Subscriber>, bool)> = match self.barrier.take() {
            Some(mut sub) => {
                self.barrier_token += 1;
                let token = Bytes::copy_from_slice(&self.barrier_token.to_be_bytes());
                let subject = self.barrier_subject.clone();
                Box::pin(async move {
                    let passed = timeout(BARRIER_TIMEOUT, async {
                        if client.publish(subject, token.clone()).await.is_err() {
                            return false;
                        }
                        // Tokens of earlier barriers that timed out may still trickle in.
                        while let Some(m) = sub.next().await {
                            if m.payload == token {
                                return true;
                            }
                        }
                        false
                    })
                    .await
                    .unwrap_or(false);
                    (Some(sub), passed)
                })
            }
            // Without the barrier subscription, at least wait until the SUBs left the socket.
            None => Box::pin(async move {
                let flushed = timeout(BARRIER_TIMEOUT, client.flush()).await;
                (None, matches!(flushed, Ok(Ok(()))))
            }),
        };
        Some(PendingBarrier {
            done,
            channels: std::mem::take(&mut self.unconfirmed),
            all: std::mem::take(&mut self.resync_all),
        })
    }

    /// Releases the resyncs of a finished barrier; false when the fabric stops meanwhile.
    async fn barrier_done(
        &mut self,
        b: PendingBarrier,
        sub: Option<Subscriber>,
        passed: bool,
    ) -> bool {
        if sub.is_some() {
            self.barrier = sub;
        }
        if !passed {
            debug!("NATS subscription barrier failed or timed out; retrying");
            self.unconfirmed.extend(b.channels);
            self.resync_all |= b.all;
            self.retry_at = Some(Instant::now() + BARRIER_RETRY);
            return true;
        }
        if b.all {
            return self.deliver(Incoming::Resync(None)).await;
        }
        for (channel, generation) in b.channels {
            if self
                .subs
                .get(&channel)
                .is_some_and(|s| s.generation == generation)
                && !self.deliver(Incoming::Resync(Some(channel))).await
            {
                return false;
            }
        }
        true
    }

    /// Hands one received message to the node; false when the fabric stops meanwhile.
    async fn forward(&mut self, channel: Arc<str>, msg: async_nats::Message) -> bool {
        let counters = &self.shared.counters;
        bump(&counters.received);
        let m = match codec::decode(channel, msg.payload) {
            Ok(m) => m,
            Err(e) => {
                bump(&counters.decode_errors);
                debug!(subject = %msg.subject, error = %e, "dropping an undecodable NATS message");
                return true;
            }
        };
        if !m.is_ephemeral() {
            return self.deliver(Incoming::Message(m)).await;
        }
        match self.incoming.try_send(Incoming::Message(m)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                bump(&counters.dropped_ephemeral);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => true,
        }
    }

    /// Waits for room in the node's queue (reliable items are never dropped here); false
    /// only when the fabric stops meanwhile. A closed queue (a publish-only user dropped
    /// its receiver) swallows items, and the task stays for connection upkeep and logs.
    async fn deliver(&mut self, item: Incoming) -> bool {
        tokio::select! {
            _ = self.incoming.send(item) => true,
            _ = stopped(&mut self.stop) => false,
        }
    }
}

/// Resolves once the fabric stops (or every handle is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // Err means the sender is gone, which is a stop too; the guard must not outlive this.
    let _ = stop.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_safe_and_distinct() {
        assert_eq!(
            channel_subject("herald", "live:a.b"),
            "herald.c.bGl2ZTphLmI"
        );
        assert_eq!(channel_subject("herald", ""), "herald.c.=");
        let s = channel_subject("x.y", "a b*>.\u{e9}");
        assert!(s.starts_with("x.y.c."));
        let token = &s["x.y.c.".len()..];
        assert!(token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(channel_subject("h", "a"), channel_subject("h", "b"));
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(valid_prefix("herald"));
        assert!(valid_prefix("prod.herald"));
        for bad in ["", ".", "a..b", "a.", "a b", "a.*", ">", "a\tb"] {
            assert!(!valid_prefix(bad), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn bad_options_fail_clearly() {
        let err = |o| async move {
            match NatsFabric::connect(o).await {
                Ok(_) => panic!("connect accepted bad options"),
                Err(e) => e.to_string(),
            }
        };
        assert!(err(NatsOptions::new(Vec::<String>::new()))
            .await
            .contains("no NATS server URL"));
        let mut o = NatsOptions::new(["127.0.0.1:1"]);
        o.subject_prefix = "a.*".into();
        assert!(err(o).await.contains("subject prefix"));
        assert!(err(NatsOptions::new(["nats://[::1"]))
            .await
            .contains("invalid NATS server URL"));
    }
}
