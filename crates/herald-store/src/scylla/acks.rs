//! Last acknowledged positions per `(channel, user)`.

use super::util::{eng, to_i64, to_u64};
use super::ScyllaStore;
use crate::{Ack, StoreError};

impl ScyllaStore {
    /// Read, compare, write: two acks of one user racing may leave the older one (a
    /// client then resumes a little earlier and sees messages again, never fewer).
    pub(super) async fn set_ack(
        &self,
        channel: &str,
        user: &str,
        ack: Ack,
    ) -> Result<Ack, StoreError> {
        if let Some(current) = self.get_ack(channel, user).await? {
            if !ack.is_after(&current) {
                return Ok(current);
            }
        }
        let st = self.statements().await?;
        self.inner
            .cql
            .write(
                &st.set_ack,
                (
                    channel,
                    user,
                    to_i64("epoch", ack.epoch)?,
                    to_i64("seq", ack.seq)?,
                    to_i64("ts", ack.ts_ms)?,
                ),
                "write ack",
            )
            .await?;
        Ok(ack)
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
