//! Last acknowledged positions per `(channel, user)`.

use super::util::{eng, to_i64, to_u64};
use super::ScyllaStore;
use crate::{Ack, StoreError};

/// Compare-and-set rounds an ack write tries before answering the value it found.
const ACK_ROUNDS: usize = 8;

impl ScyllaStore {
    /// Moves the user's ack forward, never back: a compare-and-set on the value read, so two
    /// acks racing (two tabs, a retry) leave the later position whatever order they land in.
    /// One consensus round per ack that moves; an ack that does not move writes nothing.
    pub(super) async fn set_ack(
        &self,
        channel: &str,
        user: &str,
        ack: Ack,
    ) -> Result<Ack, StoreError> {
        let st = self.statements().await?;
        let (epoch, seq, ts) = (
            to_i64("epoch", ack.epoch)?,
            to_i64("seq", ack.seq)?,
            to_i64("ts", ack.ts_ms)?,
        );
        for _ in 0..ACK_ROUNDS {
            let applied = match self.get_ack(channel, user).await? {
                Some(current) if !ack.is_after(&current) => return Ok(current),
                Some(current) => {
                    let cur = (to_i64("epoch", current.epoch)?, to_i64("seq", current.seq)?);
                    self.inner
                        .cql
                        .lwt(
                            &st.advance_ack,
                            (epoch, seq, ts, channel, user, cur.0, cur.1),
                            "advance ack",
                        )
                        .await?
                }
                None => {
                    self.inner
                        .cql
                        .lwt(
                            &st.insert_ack,
                            (channel, user, epoch, seq, ts),
                            "insert ack",
                        )
                        .await?
                }
            };
            if applied {
                return Ok(ack);
            }
        }
        // Others kept moving it: what is there now is at least as recent as what they read.
        match self.get_ack(channel, user).await? {
            Some(current) if !ack.is_after(&current) => Ok(current),
            _ => Err(StoreError::Engine(format!(
                "ack of {user} on {channel}: still contended after {ACK_ROUNDS} rounds"
            ))),
        }
    }

    pub(super) async fn get_ack(
        &self,
        channel: &str,
        user: &str,
    ) -> Result<Option<Ack>, StoreError> {
        let st = self.statements().await?;
        let rows = self
            .inner
            .cql
            .read(&st.get_ack, (channel, user), "read ack")
            .await?;
        let row = rows
            .maybe_first_row::<(i64, i64, i64)>()
            .map_err(eng("read ack"))?;
        row.map(|(epoch, seq, ts)| {
            Ok(Ack {
                epoch: to_u64("ack", epoch)?,
                seq: to_u64("ack", seq)?,
                ts_ms: to_u64("ack", ts)?,
            })
        })
        .transpose()
    }

    pub(super) async fn list_acks(
        &self,
        channel: &str,
        after_user: &str,
        limit: usize,
    ) -> Result<Vec<(String, Ack)>, StoreError> {
        let st = self.statements().await?;
        let n = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows = self
            .inner
            .cql
            .read(&st.list_acks, (channel, after_user, n), "list acks")
            .await?;
        let mut out = Vec::new();
        for r in rows
            .rows::<(String, i64, i64, i64)>()
            .map_err(eng("list acks"))?
        {
            let (user, epoch, seq, ts) = r.map_err(eng("list acks"))?;
            out.push((
                user,
                Ack {
                    epoch: to_u64("ack", epoch)?,
                    seq: to_u64("ack", seq)?,
                    ts_ms: to_u64("ack", ts)?,
                },
            ));
        }
        Ok(out)
    }
}
