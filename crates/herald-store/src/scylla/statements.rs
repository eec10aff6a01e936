//! Every statement the store runs, prepared once per session.

use super::cql::Cql;
use super::util::engine;
use crate::StoreError;
use scylla::statement::prepared::PreparedStatement;

pub(super) struct Statements {
    // messages
    pub insert_message: PreparedStatement,
    pub insert_message_with_head: PreparedStatement,
    pub set_head: PreparedStatement,
    pub get_head: PreparedStatement,
    pub read_messages: PreparedStatement,
    pub read_timestamps: PreparedStatement,
    pub message_key: PreparedStatement,
    // channels
    pub get_channel: PreparedStatement,
    pub seal_channel: PreparedStatement,
    pub set_epoch: PreparedStatement,
    pub create_channel: PreparedStatement,
    pub set_bucket: PreparedStatement,
    pub set_low: PreparedStatement,
    pub list_channels: PreparedStatement,
    // idempotency
    pub insert_idempotency: PreparedStatement,
    /// Marks a record whose message has landed.
    pub mark_landed: PreparedStatement,
    pub get_idempotency: PreparedStatement,
    // acks
    pub get_ack: PreparedStatement,
    /// The first ack of a user on a channel (conditional: nobody else wrote one meanwhile).
    pub insert_ack: PreparedStatement,
    /// Moves an ack forward from the value read (conditional: still that value).
    pub advance_ack: PreparedStatement,
    pub list_acks: PreparedStatement,
    // leases
    pub lease_rows: PreparedStatement,
    pub lease_register: PreparedStatement,
    pub lease_renew: PreparedStatement,
    pub lease_mark_dead: PreparedStatement,
    pub lease_take: PreparedStatement,
    pub lease_release: PreparedStatement,
}

impl Statements {
    pub async fn prepare(cql: &Cql, ks: &str) -> Result<Self, StoreError> {
        let p = |q: String| async move {
            cql.session
                .prepare(q.clone())
                .await
                .map_err(|e| engine(&q, e))
        };
        let row_columns = "channel, bucket, seq, epoch, ts, event, data, idem_key";
        Ok(Self {
            insert_message: p(format!(
                "INSERT INTO {ks}.messages ({row_columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
                 USING TTL ? AND TIMESTAMP ?"
            ))
            .await?,
            insert_message_with_head: p(format!(
                "INSERT INTO {ks}.messages ({row_columns}, head_seq, head_fence, head_epoch) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
            ))
            .await?,
            set_head: p(format!(
                "UPDATE {ks}.messages USING TTL ? AND TIMESTAMP ? SET head_seq = ?, \
                 head_fence = ?, head_epoch = ? WHERE channel = ? AND bucket = ?"
            ))
            .await?,
            get_head: p(format!(
                "SELECT DISTINCT head_seq, head_fence, head_epoch, TTL(head_seq) \
                 FROM {ks}.messages WHERE channel = ? AND bucket = ?"
            ))
            .await?,
            read_messages: p(format!(
                "SELECT seq, epoch, ts, event, data FROM {ks}.messages \
                 WHERE channel = ? AND bucket = ? AND seq >= ? AND seq <= ? LIMIT ?"
            ))
            .await?,
            read_timestamps: p(format!(
                "SELECT seq, ts FROM {ks}.messages \
                 WHERE channel = ? AND bucket = ? AND seq >= ? AND seq <= ? LIMIT ?"
            ))
            .await?,
            message_key: p(format!(
                "SELECT seq, idem_key FROM {ks}.messages \
                 WHERE channel = ? AND bucket = ? AND seq = ?"
            ))
            .await?,
            get_channel: p(format!(
                "SELECT epoch, fence, WRITETIME(fence), bucket, low FROM {ks}.channels \
                 WHERE channel = ?"
            ))
            .await?,
            seal_channel: p(format!(
                "UPDATE {ks}.channels USING TIMESTAMP ? SET fence = ? WHERE channel = ?"
            ))
            .await?,
            set_epoch: p(format!(
                "UPDATE {ks}.channels USING TIMESTAMP ? SET epoch = ?, bucket = ?, low = ? \
                 WHERE channel = ?"
            ))
            .await?,
            create_channel: p(format!(
                "UPDATE {ks}.channels USING TIMESTAMP ? SET epoch = ?, fence = ?, bucket = 0, \
                 low = 0 WHERE channel = ?"
            ))
            .await?,
            set_bucket: p(format!(
                "UPDATE {ks}.channels USING TIMESTAMP ? SET bucket = ? WHERE channel = ?"
            ))
            .await?,
            set_low: p(format!(
                "UPDATE {ks}.channels USING TIMESTAMP ? SET low = ? WHERE channel = ?"
            ))
            .await?,
            list_channels: p(format!("SELECT channel FROM {ks}.channels")).await?,
            insert_idempotency: p(format!(
                "INSERT INTO {ks}.idempotency (channel, key, epoch, seq, expires_at) \
                 VALUES (?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
            ))
            .await?,
            mark_landed: p(format!(
                "UPDATE {ks}.idempotency USING TTL ? AND TIMESTAMP ? SET landed = true \
                 WHERE channel = ? AND key = ?"
            ))
            .await?,
            get_idempotency: p(format!(
                "SELECT epoch, seq, expires_at, landed FROM {ks}.idempotency \
                 WHERE channel = ? AND key = ?"
            ))
            .await?,
            get_ack: p(format!(
                "SELECT epoch, seq, ts FROM {ks}.acks WHERE channel = ? AND user = ?"
            ))
            .await?,
            insert_ack: p(format!(
                "INSERT INTO {ks}.acks (channel, user, epoch, seq, ts) VALUES (?, ?, ?, ?, ?) \
                 IF NOT EXISTS"
            ))
            .await?,
            advance_ack: p(format!(
                "UPDATE {ks}.acks SET epoch = ?, seq = ?, ts = ? WHERE channel = ? AND user = ? \
                 IF epoch = ? AND seq = ?"
            ))
            .await?,
            list_acks: p(format!(
                "SELECT user, epoch, seq, ts FROM {ks}.acks WHERE channel = ? AND user > ? LIMIT ?"
            ))
            .await?,
            lease_rows: p(format!(
                "SELECT name, owner, fence, lo, id, addr, version, ceiling, dead \
                 FROM {ks}.leases WHERE scope = ?"
            ))
            .await?,
            lease_register: p(format!(
                "INSERT INTO {ks}.leases (scope, name, id, addr, version, ceiling, dead) \
                 VALUES (?, ?, ?, ?, 0, ?, false) IF NOT EXISTS"
            ))
            .await?,
            lease_renew: p(format!(
                "UPDATE {ks}.leases SET version = ?, ceiling = ? WHERE scope = ? AND name = ? \
                 IF version = ? AND dead = false"
            ))
            .await?,
            lease_mark_dead: p(format!(
                "UPDATE {ks}.leases USING TTL ? SET dead = true, id = ?, addr = ?, \
                 version = ?, ceiling = ? WHERE scope = ? AND name = ? IF version = ?"
            ))
            .await?,
            lease_take: p(format!(
                "UPDATE {ks}.leases SET owner = ?, fence = ?, lo = ? WHERE scope = ? AND name = ? \
                 IF owner = ? AND fence = ?"
            ))
            .await?,
            lease_release: p(format!(
                "UPDATE {ks}.leases SET owner = null, lo = ? WHERE scope = ? AND name = ? \
                 IF owner = ? AND fence = ?"
            ))
            .await?,
        })
    }
}
