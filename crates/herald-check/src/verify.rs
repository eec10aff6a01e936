//! The verifier: what the clients recorded against the guarantees G1–G9 of docs/RELIABILITY.md.
//!
//! Two levels. [`SessionCheck`] follows one SSE connection event by event (so a long run
//! keeps no event log): per channel, every reliable event must continue the position the
//! client held — the cursor it presented, the live start the server's first `id:` named, the
//! previous event, or a `herald:reset` — and every `id:` must name exactly the positions the
//! stream delivered. [`verify_final`] then judges what needs the whole run: acknowledged
//! publishes against the final history (durability, exactly-once), history contiguity,
//! delivered payloads against stored ones, and whether each reset was justified by retention
//! at the time it was sent.

use crate::record::{data_hash, AckRec, FinalHistory, HistMsg, Universe};
use crate::sse::RawEvent;
use herald_proto::{Cursor, Position};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// What a violation breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// G1: an acknowledged publish is not in the store (or the store trimmed it while
    /// within retention).
    LostPublish,
    /// G1/G3: stored or delivered data differs from what was published or stored.
    DataMismatch,
    /// G2: two publishes with different keys were acknowledged at one position.
    SeqConflict,
    /// G1/G2: a publish was given a seq at or below one already acknowledged before it
    /// was sent (a sequencer working from a stale head): subscribers past that seq never get
    /// it, and below the retention window it is not even readable.
    StaleSeq,
    /// G6: one idempotency key was applied twice or answered two positions.
    DoubleApply,
    /// G2: the stored log skips seqs within an epoch.
    HistoryGap,
    /// G2/G3: a subscriber's channel skipped seqs (also: the first event after a resume
    /// or a reset is not the next position).
    Gap,
    /// G3: a subscriber got a position it already had.
    Duplicate,
    /// G2: a seq arrived after a later one.
    OutOfOrder,
    /// G4: a channel moved to another epoch without a `herald:reset`.
    SilentEpochChange,
    /// G3: an `id:` does not name the positions the stream delivered (a reconnect with it
    /// would skip or repeat messages), or does not decode.
    CursorMismatch,
    /// G4: a `herald:reset` for a position within retention, or one moving backwards.
    UnjustifiedReset,
    /// Wire contract (docs/API.md): a reliable event or a reset without `id:`.
    MissingId,
    /// G5 and the wire contract (docs/API.md): an ephemeral event carried an `id:`.
    EphemeralWithId,
    /// Wire contract (docs/API.md): an event that does not parse, or names a channel the
    /// stream did not ask for.
    Malformed,
    /// A delivered message the store does not have.
    PhantomMessage,
    /// G4 "never a stuck stream": a subscriber did not reach a channel's head in time.
    Stuck,
    /// G8: a server process exceeded the memory bound.
    Memory,
    /// A process could not be restarted, or valid requests were refused.
    Availability,
}

impl Kind {
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// One broken guarantee, with enough detail to find it in the logs.
#[derive(Clone, Debug, Serialize)]
pub struct Violation {
    pub kind: Kind,
    pub detail: String,
}

impl Violation {
    pub fn new(kind: Kind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

/// A `herald:reset` a subscriber received, judged at the end.
#[derive(Clone, Debug)]
pub struct ResetObs {
    pub who: String,
    pub channel: usize,
    /// Where the client stood on the channel when the reset arrived.
    pub prior: Option<Position>,
    pub to: Position,
    pub reason: String,
    pub at_ms: u64,
}

/// Counts of what the sessions saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EventStats {
    pub sessions: u64,
    pub reliable: u64,
    pub ephemeral: u64,
    pub resets: u64,
    pub other: u64,
}

impl EventStats {
    fn add(&mut self, o: &EventStats) {
        self.sessions += o.sessions;
        self.reliable += o.reliable;
        self.ephemeral += o.ephemeral;
        self.resets += o.resets;
        self.other += o.other;
    }
}

/// What one session contributes to the final verification.
#[derive(Debug, Default)]
pub struct SessionObs {
    pub violations: Vec<Violation>,
    /// `(channel, epoch, seq, data hash)` of every reliable event.
    pub data: Vec<(usize, u64, u64, u64)>,
    pub resets: Vec<ResetObs>,
    pub stats: EventStats,
}

/// Follows one SSE connection.
pub struct SessionCheck {
    universe: Arc<Universe>,
    who: String,
    /// The stream's channels (universe ids) and where the client stands on each.
    chans: Vec<(usize, Option<Position>)>,
    /// The positions presented at connect (the client already had everything up to them).
    presented: Vec<Option<Position>>,
    seen: HashSet<(usize, u64, u64)>,
    out: SessionObs,
}

fn same(a: Position, b: Position) -> bool {
    a.seq == b.seq && (a.epoch == b.epoch || a.epoch == 0 || b.epoch == 0)
}

fn show(p: Option<Position>) -> String {
    match p {
        Some(p) => format!("({}, {})", p.epoch, p.seq),
        None => "(none)".to_owned(),
    }
}

impl SessionCheck {
    /// A session of `channels` (names of the universe) opened with `presented` as
    /// `Last-Event-ID` (a cursor the server issued earlier), or none.
    pub fn new(
        universe: Arc<Universe>,
        who: impl Into<String>,
        channels: &[String],
        presented: Option<&str>,
    ) -> Self {
        let who = who.into();
        let mut out = SessionObs::default();
        out.stats.sessions = 1;
        let cursor = match presented.map(Cursor::decode) {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                out.violations.push(Violation::new(
                    Kind::CursorMismatch,
                    format!("{who}: a cursor the server issued does not decode: {e}"),
                ));
                None
            }
        };
        let chans: Vec<(usize, Option<Position>)> = channels
            .iter()
            .filter_map(|c| universe.id(c))
            .map(|id| {
                let p = cursor.as_ref().and_then(|c| c.get_hash(universe.hash(id)));
                (id, p)
            })
            .collect();
        let presented = chans.iter().map(|&(_, p)| p).collect();
        Self {
            universe,
            who,
            chans,
            presented,
            seen: HashSet::new(),
            out,
        }
    }

    fn violation(&mut self, kind: Kind, detail: String) {
        let who = &self.who;
        self.out
            .violations
            .push(Violation::new(kind, format!("{who}: {detail}")));
    }

    /// Where the client stands on each channel of the stream.
    pub fn positions(&self) -> impl Iterator<Item = (usize, Option<Position>)> + '_ {
        self.chans.iter().copied()
    }

    /// One event as received, at `at_ms`.
    pub fn event(&mut self, ev: &RawEvent, at_ms: u64) {
        let env: Value = match serde_json::from_str(&ev.data) {
            Ok(v) => v,
            Err(e) => {
                self.violation(
                    Kind::Malformed,
                    format!(
                        "event {:?} data is not JSON ({e}): {:.200}",
                        ev.event, ev.data
                    ),
                );
                return;
            }
        };
        let name = env.get("channel").and_then(Value::as_str).unwrap_or("");
        let Some(slot) = self
            .universe
            .id(name)
            .and_then(|id| self.chans.iter().position(|&(c, _)| c == id))
        else {
            if ev.event.starts_with("herald:") && ev.event != "herald:reset" {
                self.out.stats.other += 1;
                return;
            }
            self.violation(
                Kind::Malformed,
                format!(
                    "event {:?} for channel {name:?}, which the stream did not ask for: {:.200}",
                    ev.event, ev.data
                ),
            );
            return;
        };
        if ev.event == "herald:reset" {
            self.reset(slot, &env, ev, at_ms);
            return;
        }
        if ev.event.starts_with("herald:") {
            self.out.stats.other += 1;
            return;
        }
        let seq = env.get("seq").and_then(Value::as_u64);
        let epoch = env.get("epoch").and_then(Value::as_u64);
        match (seq, epoch) {
            (Some(seq), Some(epoch)) => {
                self.reliable(slot, Position { epoch, seq }, env.get("data"), ev)
            }
            (None, None) => {
                self.out.stats.ephemeral += 1;
                if let Some(id) = &ev.id {
                    self.violation(
                        Kind::EphemeralWithId,
                        format!("ephemeral event on {name} carries id: {id}"),
                    );
                }
            }
            _ => self.violation(
                Kind::Malformed,
                format!("event with only one of epoch/seq: {:.200}", ev.data),
            ),
        }
    }

    fn reliable(&mut self, slot: usize, at: Position, data: Option<&Value>, ev: &RawEvent) {
        self.out.stats.reliable += 1;
        let (ch, prior) = self.chans[slot];
        let name = self.universe.name(ch).to_owned();
        if ev.id.is_none() {
            self.violation(
                Kind::MissingId,
                format!("reliable event {name} seq {} has no id:", at.seq),
            );
        }
        let key = (ch, at.epoch, at.seq);
        let mut advance = true;
        match prior {
            Some(p) if p.epoch != 0 && p.epoch != at.epoch => self.violation(
                Kind::SilentEpochChange,
                format!(
                    "{name} went from epoch {} seq {} to epoch {} seq {} without herald:reset",
                    p.epoch, p.seq, at.epoch, at.seq
                ),
            ),
            Some(p) if at.seq == p.seq + 1 => {}
            Some(p) if at.seq > p.seq + 1 => {
                let first = self.first_event_of(ch);
                self.violation(
                    Kind::Gap,
                    format!(
                        "{name}: got seq {} after {} — seqs {}..={} never arrived{}",
                        at.seq,
                        p.seq,
                        p.seq + 1,
                        at.seq - 1,
                        if first {
                            " (first event of the channel in this session: the resume point was skipped)"
                        } else {
                            ""
                        }
                    ),
                );
            }
            Some(p) => {
                advance = false;
                let had = self.presented[slot].is_some_and(|c| at.seq <= c.seq);
                if self.seen.contains(&key) || had {
                    self.violation(
                        Kind::Duplicate,
                        format!(
                            "{name} seq {} delivered again (client was at {}{})",
                            at.seq,
                            p.seq,
                            if had {
                                ", and had it before connecting"
                            } else {
                                ""
                            }
                        ),
                    );
                } else {
                    self.violation(
                        Kind::OutOfOrder,
                        format!("{name} seq {} arrived after seq {}", at.seq, p.seq),
                    );
                }
            }
            None => {}
        }
        if advance {
            self.chans[slot].1 = Some(at);
        }
        self.seen.insert(key);
        let hash = data.map(data_hash).unwrap_or(0);
        self.out.data.push((ch, at.epoch, at.seq, hash));
        if let Some(id) = &ev.id {
            self.check_cursor(id, &format!("{name} seq {}", at.seq));
        }
    }

    /// Whether no event of `ch` was delivered in this session yet (before the current one).
    fn first_event_of(&self, ch: usize) -> bool {
        !self.seen.iter().any(|&(c, _, _)| c == ch)
    }

    fn reset(&mut self, slot: usize, env: &Value, ev: &RawEvent, at_ms: u64) {
        self.out.stats.resets += 1;
        let (ch, prior) = self.chans[slot];
        let name = self.universe.name(ch).to_owned();
        let (Some(epoch), Some(seq)) = (
            env.get("epoch").and_then(Value::as_u64),
            env.get("seq").and_then(Value::as_u64),
        ) else {
            self.violation(
                Kind::Malformed,
                format!("herald:reset without epoch/seq: {:.200}", ev.data),
            );
            return;
        };
        let to = Position { epoch, seq };
        if ev.id.is_none() {
            self.violation(
                Kind::MissingId,
                format!("herald:reset for {name} has no id:"),
            );
        }
        self.out.resets.push(ResetObs {
            who: self.who.clone(),
            channel: ch,
            prior,
            to,
            reason: env
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            at_ms,
        });
        self.chans[slot].1 = Some(to);
        if let Some(id) = &ev.id {
            self.check_cursor(id, &format!("herald:reset of {name}"));
        }
    }

    /// The `id:` after an event must name, for every channel of the stream, exactly the
    /// position the client now holds. Channels the client had no position for yet (a live
    /// start) take the one the server names.
    fn check_cursor(&mut self, id: &str, after: &str) {
        let cursor = match Cursor::decode(id) {
            Ok(c) => c,
            Err(e) => {
                self.violation(
                    Kind::CursorMismatch,
                    format!("id: after {after} does not decode ({e}): {id}"),
                );
                return;
            }
        };
        for i in 0..self.chans.len() {
            let (ch, held) = self.chans[i];
            let named = cursor.get_hash(self.universe.hash(ch));
            match (named, held) {
                (Some(n), None) => self.chans[i].1 = Some(n),
                (Some(n), Some(h)) if same(n, h) => {}
                (None, None) => {}
                (n, h) => {
                    let name = self.universe.name(ch).to_owned();
                    self.violation(
                        Kind::CursorMismatch,
                        format!(
                            "id: after {after} names {name} at {} but the stream delivered it up to {}",
                            show(n),
                            show(h)
                        ),
                    );
                }
            }
        }
    }

    pub fn finish(self) -> SessionObs {
        self.out
    }
}

/// Everything the sessions of a run saw, merged.
#[derive(Debug, Default)]
pub struct Observations {
    pub violations: Vec<Violation>,
    /// `(channel, epoch, seq)` → hash of the data first delivered for it.
    pub seen: HashMap<(usize, u64, u64), u64>,
    pub resets: Vec<ResetObs>,
    pub stats: EventStats,
}

impl Observations {
    pub fn merge(&mut self, s: SessionObs, universe: &Universe) {
        self.violations.extend(s.violations);
        self.stats.add(&s.stats);
        self.resets.extend(s.resets);
        for (ch, epoch, seq, hash) in s.data {
            let first = *self.seen.entry((ch, epoch, seq)).or_insert(hash);
            if first != hash {
                self.violations.push(Violation::new(
                    Kind::DataMismatch,
                    format!(
                        "{} epoch {epoch} seq {seq} was delivered with different data to different sessions",
                        universe.name(ch)
                    ),
                ));
            }
        }
    }
}

/// Figures of the final verification.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FinalSummary {
    /// Acknowledged publishes found in history with their data.
    pub acks_verified: u64,
    /// Acknowledged publishes already trimmed by retention (legitimately).
    pub acks_trimmed: u64,
    pub history_messages: u64,
    /// Delivered events whose data was compared with the store's or the publisher's.
    pub deliveries_verified: u64,
    pub resets_judged: u64,
}

/// A history read per channel (`None` when it could not be read).
pub type Histories = Vec<Option<FinalHistory>>;

/// Verifies the run: acks against history, history contiguity, delivered data, resets.
pub fn verify_final(
    universe: &Universe,
    acks: &[AckRec],
    histories: &Histories,
    obs: &Observations,
) -> (Vec<Violation>, FinalSummary) {
    let mut v = Vec::new();
    let mut sum = FinalSummary::default();
    // Per channel: seq → stored message.
    let mut index: Vec<HashMap<u64, &HistMsg>> = vec![HashMap::new(); universe.channels.len()];
    for (ch, h) in histories.iter().enumerate() {
        let Some(h) = h else { continue };
        let name = universe.name(ch);
        sum.history_messages += h.messages.len() as u64;
        let mut expect = h.first_seq;
        for m in &h.messages {
            if m.seq != expect {
                v.push(Violation::new(
                    Kind::HistoryGap,
                    format!(
                        "{name} epoch {}: stored log jumps to seq {} where {expect} was next (first_seq {}, last_seq {})",
                        h.epoch, m.seq, h.first_seq, h.last_seq
                    ),
                ));
            }
            expect = m.seq + 1;
            index[ch].insert(m.seq, m);
        }
        if !h.messages.is_empty() && expect != h.last_seq + 1 {
            v.push(Violation::new(
                Kind::HistoryGap,
                format!(
                    "{name}: history ends at seq {} but reports last_seq {}",
                    expect - 1,
                    h.last_seq
                ),
            ));
        }
        let mut by_key: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for m in &h.messages {
            if let Some(k) = &m.key {
                by_key.entry(k).or_default().push(m.seq);
            }
        }
        for (k, seqs) in by_key.iter().filter(|(_, s)| s.len() > 1) {
            v.push(Violation::new(
                Kind::DoubleApply,
                format!("{name}: idempotency key {k} is stored at seqs {seqs:?}"),
            ));
        }
    }

    // Acks: exactly-once answers, one key per position, durability.
    // Per channel: (acked_ms, seq) with seq as running maximum — what the channel had
    // certainly reached by a time.
    let mut lower: HashMap<(&str, u64), Vec<(u64, u64)>> = HashMap::new();
    for a in acks {
        lower
            .entry((a.channel.as_str(), a.epoch))
            .or_default()
            .push((a.acked_ms, a.seq));
    }
    for s in lower.values_mut() {
        s.sort_unstable();
        let mut max = 0;
        for e in s.iter_mut() {
            max = max.max(e.1);
            e.1 = max;
        }
    }
    // The highest seq of the channel acknowledged before `a` was first sent: a correct
    // sequencer gives `a` a later one.
    let reached = |a: &AckRec| {
        lower
            .get(&(a.channel.as_str(), a.epoch))
            .map_or(0, |s| max_before(s, a.first_sent_ms.saturating_sub(1)))
    };
    let mut by_key: HashMap<&str, &AckRec> = HashMap::new();
    let mut by_pos: HashMap<(&str, u64, u64), &AckRec> = HashMap::new();
    for a in acks {
        if let Some(first) = by_key.get(a.key.as_str()) {
            if (first.channel.as_str(), first.epoch, first.seq)
                != (a.channel.as_str(), a.epoch, a.seq)
            {
                v.push(Violation::new(
                    Kind::DoubleApply,
                    format!(
                        "idempotency key {} was answered {} epoch {} seq {} ({} via {}) and later {} epoch {} seq {} ({} via {}){}",
                        a.key,
                        first.channel,
                        first.epoch,
                        first.seq,
                        universe.t(first.acked_ms),
                        first.via,
                        a.channel,
                        a.epoch,
                        a.seq,
                        universe.t(a.acked_ms),
                        a.via,
                        if a.duplicate { "" } else { " (not flagged duplicate)" }
                    ),
                ));
            }
        } else {
            by_key.insert(&a.key, a);
        }
        match by_pos.get(&(a.channel.as_str(), a.epoch, a.seq)) {
            Some(o) if o.key != a.key => v.push(Violation::new(
                Kind::SeqConflict,
                format!(
                    "{} epoch {} seq {} was acknowledged to key {} ({} via {}) and to key {} ({} via {}{}); the channel was already at seq >= {} when the later one was sent",
                    a.channel,
                    a.epoch,
                    a.seq,
                    o.key,
                    universe.t(o.acked_ms),
                    o.via,
                    a.key,
                    universe.t(a.acked_ms),
                    a.via,
                    if a.duplicate { ", flagged duplicate" } else { "" },
                    reached(a),
                ),
            )),
            Some(_) => {}
            None => {
                by_pos.insert((a.channel.as_str(), a.epoch, a.seq), a);
            }
        }
        let behind = reached(a);
        if a.seq <= behind {
            v.push(Violation::new(
                Kind::StaleSeq,
                format!(
                    "{} seq {} (key {}, sent {}, acked {} via {}) is at or below seq {} acknowledged before it was sent: subscribers past that point never get it",
                    a.channel,
                    a.seq,
                    a.key,
                    universe.t(a.first_sent_ms),
                    universe.t(a.acked_ms),
                    a.via,
                    behind
                ),
            ));
        }
        let Some(ch) = universe.id(&a.channel) else {
            continue;
        };
        let Some(h) = &histories[ch] else { continue };
        let n = universe.channels[ch].retention_count;
        if h.epoch != a.epoch {
            v.push(Violation::new(
                Kind::LostPublish,
                format!(
                    "{} seq {} (key {}) was acknowledged in epoch {} but the store's log is epoch {}",
                    a.channel, a.seq, a.key, a.epoch, h.epoch
                ),
            ));
        } else if a.seq < h.first_seq {
            if a.seq + n > h.last_seq {
                v.push(Violation::new(
                    Kind::LostPublish,
                    format!(
                        "{} seq {} (key {}) is trimmed (first_seq {}) although within retention ({n} messages, last_seq {})",
                        a.channel, a.seq, a.key, h.first_seq, h.last_seq
                    ),
                ));
            } else {
                sum.acks_trimmed += 1;
            }
        } else {
            match index[ch].get(&a.seq) {
                None => v.push(Violation::new(
                    Kind::LostPublish,
                    format!(
                        "{} seq {} (key {}) was acknowledged but is not in the store (first_seq {}, last_seq {})",
                        a.channel, a.seq, a.key, h.first_seq, h.last_seq
                    ),
                )),
                Some(m) if m.data_hash != a.data_hash => v.push(Violation::new(
                    Kind::DataMismatch,
                    format!(
                        "{} seq {}: stored data (key {:?}) is not what key {} published",
                        a.channel, a.seq, m.key, a.key
                    ),
                )),
                Some(_) => sum.acks_verified += 1,
            }
        }
    }

    // Delivered data against the store (or the acknowledged publish once trimmed).
    let mut phantom: BTreeMap<(usize, u64), (u64, u64)> = BTreeMap::new();
    for (&(ch, epoch, seq), &hash) in &obs.seen {
        let name = universe.name(ch);
        let stored = histories[ch]
            .as_ref()
            .filter(|h| h.epoch == epoch)
            .and_then(|_| index[ch].get(&seq));
        if let Some(m) = stored {
            sum.deliveries_verified += 1;
            if m.data_hash != hash {
                v.push(Violation::new(
                    Kind::DataMismatch,
                    format!("{name} seq {seq}: a subscriber got data the store does not have"),
                ));
            }
            continue;
        }
        if let Some(a) = by_pos.get(&(name, epoch, seq)) {
            sum.deliveries_verified += 1;
            if a.data_hash != hash {
                v.push(Violation::new(
                    Kind::DataMismatch,
                    format!(
                        "{name} seq {seq}: a subscriber got data other than key {} published",
                        a.key
                    ),
                ));
            }
            continue;
        }
        let trimmed = histories[ch]
            .as_ref()
            .is_some_and(|h| h.epoch == epoch && seq < h.first_seq);
        if !trimmed && histories[ch].is_some() {
            let e = phantom.entry((ch, epoch)).or_insert((seq, seq));
            e.0 = e.0.min(seq);
            e.1 = e.1.max(seq);
        }
    }
    for ((ch, epoch), (lo, hi)) in phantom {
        v.push(Violation::new(
            Kind::PhantomMessage,
            format!(
                "{} epoch {epoch}: subscribers got seqs in {lo}..={hi} that the store does not have",
                universe.name(ch)
            ),
        ));
    }

    // Resets: only for positions older than retention, or from another epoch.
    let heads = HeadBounds::new(universe, acks, histories);
    for r in &obs.resets {
        sum.resets_judged += 1;
        let name = universe.name(r.channel);
        let n = universe.channels[r.channel].retention_count;
        let Some(p) = r.prior else {
            v.push(Violation::new(
                Kind::UnjustifiedReset,
                format!(
                    "{}: herald:reset of {name} (reason {}) before the client had any position on it (a live start needs none)",
                    r.who, r.reason
                ),
            ));
            continue;
        };
        let other_epoch = p.epoch != 0 && p.epoch != r.to.epoch;
        let verdict = match r.reason.as_str() {
            "epoch" if p.epoch != r.to.epoch => None,
            "epoch" => Some(format!("reason epoch, but epoch {} did not change", p.epoch)),
            "retention" if other_epoch => None,
            "retention" if r.to.seq <= p.seq => Some(format!(
                "reason retention moved the channel backwards from seq {} to {}",
                p.seq, r.to.seq
            )),
            "retention" => {
                let bound = heads.upper(r.channel, r.to.epoch, r.at_ms);
                if p.seq + n >= bound {
                    Some(format!(
                        "reason retention, but seq {} was within retention: the channel's head was at most {bound} and keeps {n} messages",
                        p.seq
                    ))
                } else {
                    None
                }
            }
            "ahead" => Some(format!(
                "reason ahead: the server no longer had seq {} that it had delivered (its head: {})",
                p.seq, r.to.seq
            )),
            other => Some(format!("unknown reason {other:?}")),
        };
        if let Some(why) = verdict {
            v.push(Violation::new(
                Kind::UnjustifiedReset,
                format!(
                    "{}: herald:reset of {name} from ({}, {}) to ({}, {}): {why}",
                    r.who, p.epoch, p.seq, r.to.epoch, r.to.seq
                ),
            ));
        }
    }
    (v, sum)
}

/// The last running-maximum seq of `series` (sorted by time) at or before `t_ms`.
fn max_before(series: &[(u64, u64)], t_ms: u64) -> u64 {
    let i = series.partition_point(|&(t, _)| t <= t_ms);
    if i == 0 {
        0
    } else {
        series[i - 1].1
    }
}

/// Upper bounds of a channel's head over time: a message cannot have been stored before its
/// first publish attempt was sent, nor (with a little slack for the server's clock read)
/// before its stored timestamp.
struct HeadBounds {
    /// Per channel and epoch: `(time, seq)` sorted by time, seq as running maximum.
    series: HashMap<(usize, u64), Vec<(u64, u64)>>,
}

const TS_SLACK_MS: u64 = 50;

impl HeadBounds {
    fn new(universe: &Universe, acks: &[AckRec], histories: &Histories) -> Self {
        let mut series: HashMap<(usize, u64), Vec<(u64, u64)>> = HashMap::new();
        for a in acks {
            if let Some(ch) = universe.id(&a.channel) {
                series
                    .entry((ch, a.epoch))
                    .or_default()
                    .push((a.first_sent_ms, a.seq));
            }
        }
        for (ch, h) in histories.iter().enumerate() {
            if let Some(h) = h {
                let s = series.entry((ch, h.epoch)).or_default();
                s.extend(
                    h.messages
                        .iter()
                        .map(|m| (m.ts.saturating_sub(TS_SLACK_MS), m.seq)),
                );
            }
        }
        for s in series.values_mut() {
            s.sort_unstable();
            let mut max = 0;
            for e in s.iter_mut() {
                max = max.max(e.1);
                e.1 = max;
            }
        }
        Self { series }
    }

    /// The highest seq the channel can have had at `t_ms`.
    fn upper(&self, ch: usize, epoch: u64, t_ms: u64) -> u64 {
        self.series
            .get(&(ch, epoch))
            .map_or(0, |s| max_before(s, t_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ChannelSpec;
    use serde_json::json;

    const E: u64 = 1_700_000_000_000;
    const LIVE: &str = "live:a";
    const TINY: &str = "tiny:b";

    fn universe() -> Arc<Universe> {
        Arc::new(Universe::new(vec![
            ChannelSpec {
                name: LIVE.into(),
                retention_count: 1000,
            },
            ChannelSpec {
                name: TINY.into(),
                retention_count: 3,
            },
        ]))
    }

    fn payload(ch: &str, seq: u64) -> Value {
        json!({ "p": 0, "n": seq, "k": format!("{ch}-{seq}") })
    }

    /// A world of `n` messages per channel, all acknowledged and stored (tiny keeps its
    /// last 3), published one per 10 ms from t = 1000.
    struct World {
        acks: Vec<AckRec>,
        histories: Histories,
    }

    fn world(n: u64) -> World {
        let mut acks = Vec::new();
        let mut histories = Vec::new();
        for (ch, keep) in [(LIVE, 1000), (TINY, 3)] {
            let mut h = FinalHistory {
                epoch: E,
                first_seq: n.saturating_sub(keep) + 1,
                last_seq: n,
                messages: Vec::new(),
            };
            for seq in 1..=n {
                let data = payload(ch, seq);
                acks.push(AckRec {
                    channel: ch.into(),
                    key: format!("{ch}-{seq}"),
                    epoch: E,
                    seq,
                    data_hash: data_hash(&data),
                    first_sent_ms: 1000 + seq * 10,
                    acked_ms: 1005 + seq * 10,
                    via: "d0".into(),
                    duplicate: false,
                });
                if seq >= h.first_seq {
                    h.messages
                        .push(FinalHistory::message(seq, &data, 1002 + seq * 10));
                }
            }
            histories.push(Some(h));
        }
        World { acks, histories }
    }

    /// Tracks the stream-wide cursor the way the server writes it.
    struct Stream {
        cursor: Cursor,
    }

    impl Stream {
        fn new(start: &[(&str, u64)]) -> Self {
            let mut cursor = Cursor::default();
            for (ch, seq) in start {
                cursor.set(
                    ch,
                    Position {
                        epoch: if *seq == 0 { 0 } else { E },
                        seq: *seq,
                    },
                );
            }
            Self { cursor }
        }

        fn id(&self) -> String {
            self.cursor.encode()
        }

        fn msg(&mut self, ch: &str, seq: u64) -> RawEvent {
            self.cursor.set(ch, Position { epoch: E, seq });
            RawEvent {
                id: Some(self.id()),
                event: "message".into(),
                data: json!({"channel": ch, "epoch": E, "seq": seq, "ts": 1, "data": payload(ch, seq)})
                    .to_string(),
            }
        }

        fn reset(&mut self, ch: &str, seq: u64, reason: &str) -> RawEvent {
            self.cursor.set(ch, Position { epoch: E, seq });
            RawEvent {
                id: Some(self.id()),
                event: "herald:reset".into(),
                data: json!({"channel": ch, "epoch": E, "seq": seq, "reason": reason}).to_string(),
            }
        }
    }

    fn ephemeral(ch: &str, id: Option<String>) -> RawEvent {
        RawEvent {
            id,
            event: "reaction".into(),
            data: json!({"channel": ch, "ts": 1, "data": {"e": 1}}).to_string(),
        }
    }

    /// Runs one session's events (at time `at`) and the final verification.
    fn run(
        w: &World,
        presented: Option<&str>,
        channels: &[&str],
        events: &[RawEvent],
        at: u64,
    ) -> Vec<Violation> {
        let u = universe();
        let names: Vec<String> = channels.iter().map(|c| (*c).to_owned()).collect();
        let mut s = SessionCheck::new(u.clone(), "s0#1", &names, presented);
        for e in events {
            s.event(e, at);
        }
        let mut obs = Observations::default();
        obs.merge(s.finish(), &u);
        let (mut v, _) = verify_final(&u, &w.acks, &w.histories, &obs);
        v.extend(obs.violations);
        v
    }

    fn kinds(v: &[Violation]) -> Vec<Kind> {
        let mut k: Vec<Kind> = v.iter().map(|v| v.kind).collect();
        k.sort();
        k.dedup();
        k
    }

    /// A clean session: resume of live:a at 5, tiny:b reset by retention, live start
    /// anchored by the server's first id:, an ephemeral event without id.
    fn clean() -> (World, String, Vec<RawEvent>) {
        let w = world(20);
        let presented = Stream::new(&[(LIVE, 5), (TINY, 2)]).id();
        let mut st = Stream::new(&[(LIVE, 5), (TINY, 2)]);
        let mut ev = vec![st.msg(LIVE, 6), st.msg(LIVE, 7)];
        ev.push(ephemeral(LIVE, None));
        ev.push(st.reset(TINY, 18, "retention"));
        ev.push(st.msg(TINY, 19));
        for s in 8..=20 {
            ev.push(st.msg(LIVE, s));
        }
        ev.push(st.msg(TINY, 20));
        (w, presented, ev)
    }

    #[test]
    fn a_clean_record_passes() {
        let (w, presented, ev) = clean();
        let v = run(&w, Some(&presented), &[LIVE, TINY], &ev, 1300);
        assert!(v.is_empty(), "{v:#?}");
        // A live start: no cursor; the first id names tiny:b at 19 before its first event.
        let mut st = Stream::new(&[(LIVE, 17), (TINY, 19)]);
        let ev = vec![st.msg(LIVE, 18), st.msg(TINY, 20), st.msg(LIVE, 19)];
        let v = run(&w, None, &[LIVE, TINY], &ev, 1300);
        assert!(v.is_empty(), "{v:#?}");
    }

    fn planted(f: impl FnOnce(&mut World, &mut Vec<RawEvent>)) -> Vec<Kind> {
        let (mut w, presented, mut ev) = clean();
        f(&mut w, &mut ev);
        kinds(&run(&w, Some(&presented), &[LIVE, TINY], &ev, 1300))
    }

    #[test]
    fn a_gap_is_caught() {
        assert_eq!(planted(|_, ev| drop(ev.remove(6))), vec![Kind::Gap]);
    }

    #[test]
    fn a_skipped_resume_point_is_caught() {
        // The first event after resuming at 5 is 7.
        let k = planted(|_, ev| drop(ev.remove(0)));
        assert_eq!(k, vec![Kind::Gap]);
    }

    #[test]
    fn a_duplicate_is_caught() {
        assert_eq!(
            planted(|_, ev| {
                let d = ev[7].clone();
                ev.insert(8, d);
            }),
            vec![Kind::Duplicate]
        );
        // Redelivery of what the client had before connecting.
        let (w, presented, _) = clean();
        let mut st = Stream::new(&[(LIVE, 5), (TINY, 2)]);
        let ev = vec![st.msg(LIVE, 5)];
        let v = run(&w, Some(&presented), &[LIVE, TINY], &ev, 1300);
        assert!(kinds(&v).contains(&Kind::Duplicate), "{v:#?}");
    }

    #[test]
    fn reordering_is_caught() {
        let k = planted(|_, ev| ev.swap(6, 7));
        assert!(k.contains(&Kind::OutOfOrder), "{k:?}");
    }

    #[test]
    fn a_lost_publish_is_caught() {
        let k = planted(|w, _| {
            let h = w.histories[0].as_mut().unwrap();
            h.messages.retain(|m| m.seq != 20);
            h.last_seq = 19;
        });
        assert!(k.contains(&Kind::LostPublish), "{k:?}");
        // Trimmed within retention.
        let k = planted(|w, _| {
            let h = w.histories[1].as_mut().unwrap();
            h.messages.retain(|m| m.seq != 18);
            h.first_seq = 19;
        });
        assert!(k.contains(&Kind::LostPublish), "{k:?}");
    }

    #[test]
    fn a_history_gap_is_caught() {
        let k = planted(|w, _| {
            let h = w.histories[0].as_mut().unwrap();
            h.messages.retain(|m| m.seq != 3);
        });
        assert!(k.contains(&Kind::HistoryGap), "{k:?}");
    }

    #[test]
    fn wrong_data_is_caught() {
        // Stored data differs from the acknowledged publish.
        let k = planted(|w, _| {
            let h = w.histories[0].as_mut().unwrap();
            h.messages[9].data_hash ^= 1;
        });
        assert!(k.contains(&Kind::DataMismatch), "{k:?}");
        // Delivered data differs from the stored.
        let k = planted(|_, ev| {
            ev[1].data = ev[1].data.replace("\"n\":7", "\"n\":77");
        });
        assert_eq!(k, vec![Kind::DataMismatch]);
    }

    #[test]
    fn exactly_once_breaks_are_caught() {
        // One key stored twice.
        let k = planted(|w, _| {
            let h = w.histories[0].as_mut().unwrap();
            h.messages[10].key = h.messages[9].key.clone();
        });
        assert!(k.contains(&Kind::DoubleApply), "{k:?}");
        // One key answered two seqs.
        let k = planted(|w, _| {
            let mut a = w.acks[3].clone();
            a.seq = 9;
            a.duplicate = true;
            w.acks.push(a);
        });
        assert!(k.contains(&Kind::DoubleApply), "{k:?}");
        // Two keys acknowledged at one seq.
        let k = planted(|w, _| {
            let mut a = w.acks[3].clone();
            a.key = "other".into();
            w.acks.push(a);
        });
        assert!(k.contains(&Kind::SeqConflict), "{k:?}");
    }

    #[test]
    fn a_stale_seq_is_caught() {
        // Key live:a-x is sent after seq 15 was acknowledged, and gets seq 12 (reused).
        let k = planted(|w, _| {
            let mut a = w.acks[11].clone();
            a.key = "live:a-x".into();
            a.first_sent_ms = 1000 + 15 * 10 + 50;
            a.acked_ms = a.first_sent_ms + 5;
            w.acks.push(a);
        });
        assert!(k.contains(&Kind::StaleSeq), "{k:?}");
        assert!(k.contains(&Kind::SeqConflict), "{k:?}");
        // A retry answered with its original (older) position is fine: its first attempt
        // was sent before the later seqs were acknowledged.
        let k = planted(|w, _| {
            let mut a = w.acks[11].clone();
            a.acked_ms = 1000 + 20 * 10 + 50;
            a.duplicate = true;
            w.acks.push(a);
        });
        assert!(k.is_empty(), "{k:?}");
    }

    #[test]
    fn unjustified_resets_are_caught() {
        let w = world(20);
        // live:a keeps 1000: a reset from 5 is not justified.
        let presented = Stream::new(&[(LIVE, 5)]).id();
        let mut st = Stream::new(&[(LIVE, 5)]);
        let ev = vec![st.reset(LIVE, 20, "retention")];
        let v = run(&w, Some(&presented), &[LIVE], &ev, 1300);
        assert_eq!(kinds(&v), vec![Kind::UnjustifiedReset], "{v:#?}");
        // tiny:b keeps 3; at t=1100 its head was at most 10, so a reset from 8 is not.
        let presented = Stream::new(&[(TINY, 8)]).id();
        let mut st = Stream::new(&[(TINY, 8)]);
        let ev = vec![st.reset(TINY, 10, "retention")];
        let v = run(&w, Some(&presented), &[TINY], &ev, 1100);
        assert_eq!(kinds(&v), vec![Kind::UnjustifiedReset], "{v:#?}");
        // ...but at t=1300 (head 20) it is.
        let v = run(&w, Some(&presented), &[TINY], &ev, 1300);
        assert!(v.is_empty(), "{v:#?}");
        // "ahead" means the server lost what it had delivered.
        let mut st = Stream::new(&[(TINY, 8)]);
        let ev = vec![st.reset(TINY, 6, "ahead")];
        let v = run(&w, Some(&presented), &[TINY], &ev, 1300);
        assert!(kinds(&v).contains(&Kind::UnjustifiedReset), "{v:#?}");
    }

    #[test]
    fn the_stream_must_continue_at_the_reset_position() {
        let k = planted(|_, ev| drop(ev.remove(4)));
        // (The later ids name tiny:b at 19, which the client never got: also a mismatch.)
        assert!(k.contains(&Kind::Gap), "{k:?}");
    }

    #[test]
    fn ids_are_checked() {
        // An ephemeral event with an id.
        let (_, _, ev) = clean();
        let id = ev[0].id.clone();
        let k = planted(|_, ev| ev[2] = ephemeral(LIVE, id));
        assert_eq!(k, vec![Kind::EphemeralWithId]);
        // A reliable event without one.
        let k = planted(|_, ev| ev[1].id = None);
        assert_eq!(k, vec![Kind::MissingId]);
        // An id naming the wrong position.
        let k = planted(|_, ev| {
            let mut c = Cursor::decode(ev[1].id.as_deref().unwrap()).unwrap();
            c.set(TINY, Position { epoch: E, seq: 9 });
            ev[1].id = Some(c.encode());
        });
        assert_eq!(k, vec![Kind::CursorMismatch]);
    }

    #[test]
    fn a_silent_epoch_change_is_caught() {
        let k = planted(|_, ev| {
            ev[1].data = ev[1]
                .data
                .replace(&format!("\"epoch\":{E}"), &format!("\"epoch\":{}", E + 1));
        });
        assert!(k.contains(&Kind::SilentEpochChange), "{k:?}");
    }
}
