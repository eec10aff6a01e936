//! The connection node of Herald: holds SSE streams, keeps channel → connection maps and a
//! small ring per channel, fans each message (framed once) out to local connections, and
//! brings resuming clients up to date from the ring or the store.

#![forbid(unsafe_code)]

mod drain;
mod fanout;
mod frame;
mod housekeeping;
mod hub;
mod item;
mod message;
mod occupancy;
pub mod presence;
mod queue;
mod reads;
mod registry;
mod repair;
mod replay;
mod resync;
mod stats;
mod stream;

pub use message::Message;
pub use queue::{CloseReason, SlowPolicy, Transport};
pub use stats::NodeStats;
pub use stream::{SseBody, StreamTask};

use bytes::Bytes;
use herald_fabric::{Fabric, Incoming};
use herald_proto::Cursor;
use herald_store::Store;
use queue::{ConnQueue, Item};
use rand::Rng;
use registry::Registry;
use stats::Counters;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

/// Channels waiting to be checked against the store after the fabric reported a loss.
const RESYNC_QUEUE: usize = 65_536;

/// Tunables of a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Items a connection may have queued; a reliable message beyond it disconnects the
    /// connection (it resumes from its cursor), an ephemeral one is dropped.
    pub queue_cap: usize,
    /// Recent messages kept per channel for resumes without a store read.
    pub ring_cap: usize,
    pub heartbeat: Duration,
    /// A stream whose queued data is not taken for this long is dropped.
    pub write_timeout: Duration,
    /// `retry:` sent to clients is `retry_base + random(0..retry_jitter)`.
    pub retry_base: Duration,
    pub retry_jitter: Duration,
    pub max_connections: usize,
    pub max_channels_per_stream: usize,
    /// Channels this node follows at most (each is a hub slot and a fabric subscription);
    /// a stream that would add more is refused.
    pub max_node_channels: usize,
    /// Messages read from the store per replay page.
    pub replay_page: usize,
    /// A channel without subscribers is forgotten after this long.
    pub channel_idle: Duration,
    /// What each namespace does with ephemeral messages for full queues.
    pub slow_policies: SlowPolicies,
    /// A stream is asked to reconnect (`herald:reconnect`) after 80–100 % of this, so
    /// connections spread over the nodes again after scale-out; `None`: never.
    pub max_conn_lifetime: Option<Duration>,
    /// Kernel send buffer of a stream's socket (bytes; 0 keeps the kernel's autotuning).
    /// Autotuning grows it to megabytes for a peer that stops reading, which then holds that
    /// much kernel memory and, since the queue still drains into it, hides the stall from
    /// the write timeout for minutes.
    pub stream_sndbuf: usize,
    /// Where traced messages record their hops through this node (none: not recorded).
    pub journal: Option<Arc<herald_trace::Journal>>,
    /// This node's name in presence reports.
    pub name: String,
    /// How often the node counts its subscribers and tells the cluster.
    pub presence_tick: Duration,
    /// Which namespaces get `herald:occupancy` and join/leave events.
    pub presence: PresencePolicies,
}

/// What a namespace's subscribers are told of who else is there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PresencePolicy {
    /// A `herald:occupancy` event (the channel's subscriber count) at most this often,
    /// when the count changed.
    pub occupancy_every: Option<Duration>,
    /// `herald:join` / `herald:leave` events (with the user) for channels small enough to
    /// list their users.
    pub join_leave: bool,
}

/// Presence events, per namespace.
#[derive(Clone, Debug, Default)]
pub struct PresencePolicies {
    pub default: PresencePolicy,
    pub namespaces: std::collections::HashMap<String, PresencePolicy>,
}

impl PresencePolicies {
    pub fn for_channel(&self, channel: &str) -> PresencePolicy {
        self.namespaces
            .get(herald_proto::namespace_of(channel))
            .copied()
            .unwrap_or(self.default)
    }

    /// Whether any namespace gets presence events.
    pub fn any(&self) -> bool {
        let on = |p: &PresencePolicy| p.occupancy_every.is_some() || p.join_leave;
        on(&self.default) || self.namespaces.values().any(on)
    }
}

/// Slow-consumer policy of ephemeral messages, per namespace.
#[derive(Clone, Debug, Default)]
pub struct SlowPolicies {
    pub default: SlowPolicy,
    pub namespaces: std::collections::HashMap<String, SlowPolicy>,
}

impl SlowPolicies {
    pub fn for_channel(&self, channel: &str) -> SlowPolicy {
        self.namespaces
            .get(herald_proto::namespace_of(channel))
            .copied()
            .unwrap_or(self.default)
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            queue_cap: 1024,
            ring_cap: 128,
            heartbeat: Duration::from_secs(15),
            write_timeout: Duration::from_secs(30),
            retry_base: Duration::from_millis(1000),
            retry_jitter: Duration::from_millis(2000),
            max_connections: 100_000,
            max_channels_per_stream: 64,
            max_node_channels: 1_000_000,
            replay_page: 512,
            channel_idle: Duration::from_secs(60),
            slow_policies: SlowPolicies::default(),
            max_conn_lifetime: None,
            stream_sndbuf: 64 * 1024,
            journal: None,
            name: "serve".to_owned(),
            presence_tick: Duration::from_secs(1),
            presence: PresencePolicies::default(),
        }
    }
}

/// Why a stream could not be opened.
#[derive(Debug, Error)]
pub enum NodeError {
    #[error("connection limit reached")]
    TooManyConnections,
    #[error("too many channels in one stream (max {0})")]
    TooManyChannels(usize),
    #[error("this node follows its maximum of {0} channels; try again later or another node")]
    TooManyNodeChannels(usize),
    #[error("no channel given")]
    NoChannels,
    #[error("node is shutting down")]
    ShuttingDown,
    #[error("store unavailable: {0}")]
    Store(#[from] ReadError),
}

/// Why a store read of a stream's join failed; shared by every join that waited on it.
#[derive(Clone, Debug, Error)]
pub enum ReadError {
    #[error("{0}")]
    Store(#[from] Arc<herald_store::StoreError>),
    /// The store answered, but nothing that moves the replay on.
    #[error("{0}")]
    NoProgress(&'static str),
}

/// The subscribe side: shared by all request handlers.
pub struct Node {
    hub: hub::Hub,
    reads: reads::Reads,
    fabric: Arc<dyn Fabric>,
    config: NodeConfig,
    counters: Arc<Counters>,
    registry: Registry,
    /// A drain started: new streams are refused.
    draining: std::sync::atomic::AtomicBool,
    stop: watch::Sender<bool>,
    tasks: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    presence: Arc<presence::PresenceView>,
    gossip: std::sync::OnceLock<presence::Gossip>,
}

impl Node {
    /// Starts the fan-out loop over `incoming` and the housekeeping loop.
    pub fn start(
        store: Arc<dyn Store>,
        fabric: Arc<dyn Fabric>,
        incoming: mpsc::Receiver<Incoming>,
        config: NodeConfig,
    ) -> Arc<Self> {
        let counters = Arc::new(Counters::default());
        let (stop, stop_rx) = watch::channel(false);
        let config_tick = config.presence_tick.max(Duration::from_millis(50));
        let node = Arc::new(Self {
            hub: hub::Hub::new(
                config.ring_cap,
                fabric.clone(),
                counters.clone(),
                config.slow_policies.clone(),
            ),
            reads: reads::Reads::new(store),
            fabric,
            config,
            counters,
            registry: Registry::default(),
            draining: std::sync::atomic::AtomicBool::new(false),
            stop,
            tasks: parking_lot::Mutex::new(Vec::new()),
            presence: Arc::new(presence::PresenceView::new(config_tick)),
            gossip: std::sync::OnceLock::new(),
        });
        let (resync_tx, resync_rx) = mpsc::channel(RESYNC_QUEUE);
        let (job_tx, job_rx) = mpsc::channel(repair::MAX_REPAIRING);
        let (done_tx, done_rx) = mpsc::channel(repair::MAX_REPAIRING);
        let f = tokio::spawn(fanout::run(
            node.clone(),
            incoming,
            resync_tx,
            done_rx,
            job_tx,
            stop_rx.clone(),
        ));
        let g = tokio::spawn(repair::run(node.clone(), job_rx, done_tx, stop_rx.clone()));
        let r = tokio::spawn(resync::run(node.clone(), resync_rx, stop_rx.clone()));
        let h = tokio::spawn(housekeeping::run(node.clone(), stop_rx.clone()));
        let p = tokio::spawn(occupancy::run(node.clone(), stop_rx));
        node.tasks.lock().extend([f, g, r, h, p]);
        node
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The channels with the most subscribers on this node: `(channel, subscribers, last
    /// seq fanned out)`, the most first.
    pub fn top_channels(&self, n: usize) -> Vec<(String, u64, u64)> {
        let mut all = self.hub.census_heads();
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// A channel's subscribers on this node alone (a single server's presence).
    pub fn local_occupancy(&self, channel: &str) -> presence::Occupancy {
        self.hub.occupancy(channel, presence::USERS_LISTED)
    }

    /// Subscriber counts across the cluster, as heard.
    pub fn presence(&self) -> &Arc<presence::PresenceView> {
        &self.presence
    }

    /// Sends this node's presence reports to the other processes (cluster roles); set once.
    pub fn set_gossip(&self, gossip: presence::Gossip) {
        let _ = self.gossip.set(gossip);
    }

    pub fn stats(&self) -> NodeStats {
        let mut s = self.counters.snapshot();
        s.shared_reads = self.reads.joined.load(Relaxed);
        s.store_meta_reads = self.reads.store_metas.load(Relaxed);
        s.store_range_reads = self.reads.store_ranges.load(Relaxed);
        s
    }

    /// Whether the node can take streams: its fabric carries messages.
    pub fn is_ready(&self) -> bool {
        self.fabric.is_ready()
    }

    /// Prepares a stream of `channels` (already validated and authorized), resuming each
    /// from `cursor` where it names the channel; the others resume after `user`'s ack of
    /// them if there is one (offline delivery), else start at their current head. Reserves a connection slot; the plan is then served on a socket of its own
    /// ([`StreamPlan::serve`]) or as a hyper body ([`StreamPlan::into_body`]).
    pub async fn open_stream(
        self: &Arc<Self>,
        channels: &[String],
        cursor: Option<&Cursor>,
        user: Option<&str>,
    ) -> Result<StreamPlan, NodeError> {
        if *self.stop.borrow() || self.draining.load(std::sync::atomic::Ordering::Acquire) {
            return Err(NodeError::ShuttingDown);
        }
        if channels.is_empty() {
            return Err(NodeError::NoChannels);
        }
        if channels.len() > self.config.max_channels_per_stream {
            return Err(NodeError::TooManyChannels(
                self.config.max_channels_per_stream,
            ));
        }
        // Channel names cost memory and a fabric subscription each, and a wildcard token
        // lets a client name new ones at will: past the cap, only channels already followed.
        let new_channels = channels
            .iter()
            .filter(|c| self.hub.get(c).is_none())
            .count();
        if new_channels > 0
            && self.counters.channels.load(Relaxed) as usize + new_channels
                > self.config.max_node_channels
        {
            Counters::bump(&self.counters.rejected_connections);
            return Err(NodeError::TooManyNodeChannels(
                self.config.max_node_channels,
            ));
        }
        let open = self.counters.connections.fetch_add(1, Relaxed);
        let mut plan = StreamPlan {
            node: self.clone(),
            hashes: Vec::with_capacity(channels.len()),
            slots: Vec::with_capacity(channels.len()),
            joins: Vec::with_capacity(channels.len()),
            reserved: true,
            user: user.map(Arc::from),
        };
        if open >= self.config.max_connections as i64 {
            Counters::bump(&self.counters.rejected_connections);
            return Err(NodeError::TooManyConnections);
        }
        // Every channel gets a definite start before the response goes out: a client that
        // has its 200 receives everything published afterwards.
        for (idx, ch) in channels.iter().enumerate() {
            let hash = herald_proto::channel_hash(ch);
            let claim = self.hub.claim(ch);
            let slot = claim.slot().clone();
            let mut named = cursor.and_then(|c| c.get_hash(hash));
            if let (None, Some(user)) = (named, user) {
                named = self.reads.ack(ch, user).await?;
            }
            let resume = match named {
                Some(p) => p,
                None => self.live_position(&slot).await?,
            };
            plan.hashes.push(hash);
            plan.slots.push(slot.clone());
            plan.joins.push(replay::Join {
                idx: idx as u16,
                slot,
                resume: Some(resume),
                live: named.is_none(),
                _claim: claim,
            });
        }
        Ok(plan)
    }

    /// Where a new, non-resuming subscriber of `slot` starts: the newest message this node
    /// has seen, or the store's head.
    async fn live_position(&self, slot: &hub::Slot) -> Result<herald_proto::Position, NodeError> {
        if let Some(p) = self.hub.head(slot) {
            return Ok(p);
        }
        let (meta, _) = self.reads.channel_meta(&slot.channel, slot.created).await?;
        Ok(
            meta.map_or_else(Default::default, |m| herald_proto::Position {
                epoch: m.epoch,
                seq: m.last_seq,
            }),
        )
    }

    fn retry_frame(&self) -> Bytes {
        let jitter = self.config.retry_jitter.as_millis() as u64;
        let extra = if jitter == 0 {
            0
        } else {
            rand::thread_rng().gen_range(0..jitter)
        };
        Bytes::from(herald_proto::retry_field(
            self.config.retry_base.as_millis() as u64 + extra,
        ))
    }

    /// Ends every stream (each gets a fresh jittered `retry:` so reconnects spread out) and
    /// stops the node's loops.
    pub async fn shutdown(&self, timeout: Duration) {
        let _ = self.stop.send(true);
        self.registry.for_each(|q| {
            q.push(Item::Raw(self.retry_frame()));
            q.close(CloseReason::Shutdown, false);
        });
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock());
        let deadline = tokio::time::Instant::now() + timeout;
        for t in tasks {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let _ = tokio::time::timeout(left, t).await;
        }
    }

    /// Drops every stream's TCP connection at once (the end of a graceful shutdown).
    pub fn kill_all(&self) {
        self.registry
            .for_each(|q| q.close(CloseReason::Shutdown, true));
    }
}

/// A stream ready to start: positions resolved, a connection slot reserved.
pub struct StreamPlan {
    node: Arc<Node>,
    hashes: Vec<u64>,
    slots: Vec<Arc<hub::Slot>>,
    joins: Vec<replay::Join>,
    reserved: bool,
    user: Option<Arc<str>>,
}

impl Drop for StreamPlan {
    fn drop(&mut self) {
        if self.reserved {
            self.node.counters.connections.fetch_sub(1, Relaxed);
        }
    }
}

impl StreamPlan {
    fn start(mut self, transport: Transport) -> stream::StreamGuard {
        self.reserved = false;
        let node = self.node.clone();
        Counters::bump(&node.counters.connections_total);
        let mut positions = frame::Positions::new(std::mem::take(&mut self.hashes));
        for j in &self.joins {
            if let Some(p) = j.resume {
                positions.set(j.idx, p);
            }
        }
        let mut start = node.retry_frame().to_vec();
        start.extend_from_slice(&positions.start_block());
        let queue = Arc::new(
            ConnQueue::new(
                node.config.queue_cap,
                transport,
                positions,
                node.counters.clone(),
            )
            .with_expiry(node.config.max_conn_lifetime.map(drain::expiry))
            .with_user(self.user.take()),
        );
        let conn_id = node.registry.add(&queue);
        queue.push_unbounded(Item::Raw(Bytes::from(start)));
        // A live join starts at the head read moments ago: it needs no validation against the
        // store, and usually joins right here. Only resumes (and live joins the ring cannot
        // bridge) need the replay task.
        let joins: Vec<replay::Join> = std::mem::take(&mut self.joins)
            .into_iter()
            .filter(|j| match (j.live, j.resume) {
                (true, Some(p)) => !matches!(
                    node.hub.attach(&j.slot, &queue, j.idx, p),
                    hub::Attached::Live
                ),
                _ => true,
            })
            .collect();
        if !joins.is_empty() {
            // The task ends by itself once done or once the stream closes; no handle is kept,
            // since a handle would keep the finished task's memory for the stream's life.
            drop(tokio::spawn(replay::run(
                node.clone(),
                queue.clone(),
                joins,
            )));
        }
        stream::StreamGuard {
            node,
            queue,
            slots: std::mem::take(&mut self.slots),
            conn_id,
        }
    }

    /// Serves the stream as a hyper response body; `kill` drops hyper's connection when the
    /// stream must end while its writes are stuck.
    pub fn into_body(self, kill: Arc<Notify>) -> SseBody {
        SseBody {
            guard: self.start(Transport::Hyper(kill)),
        }
    }

    /// Serves the stream on `socket`: the returned future writes `head` (the HTTP response
    /// head), then events, and completes when the stream has ended.
    pub fn serve(self, socket: TcpStream, head: Bytes) -> StreamTask {
        if self.node.config.stream_sndbuf > 0 {
            if let Err(e) = set_send_buffer(&socket, self.node.config.stream_sndbuf) {
                tracing::debug!(error = %e, "could not cap the stream's send buffer");
            }
        }
        StreamTask::new(self.start(Transport::Socket(socket)), head)
    }
}

/// Caps the socket's kernel send buffer (Linux doubles the value for its bookkeeping), so a
/// peer that stops reading holds that much of this process's memory, not megabytes.
pub fn set_send_buffer(socket: &TcpStream, bytes: usize) -> std::io::Result<()> {
    socket2::SockRef::from(socket).set_send_buffer_size(bytes)
}
