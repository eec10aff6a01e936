//! Questions to every process of a cluster over NATS ("what do you know of this traced
//! message?"): each process answers from what it holds, and the asker gathers the answers
//! that arrive within a window. Subjects are `{prefix}.ask.{topic}`, apart from channels'.

use crate::nats::NatsFabric;
use crate::FabricError;
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{timeout_at, Instant};

/// Computes this process's answer to a question; `None`: nothing to say.
pub type Answer = Arc<dyn Fn(Bytes) -> Option<Bytes> + Send + Sync>;

impl NatsFabric {
    /// Answers questions on `topic` with `answer` until the fabric shuts down. The
    /// subscription survives reconnects (the client renews it).
    pub async fn answer(&self, topic: &str, answer: Answer) -> Result<(), FabricError> {
        let inner = self.inner();
        let subject = format!("{}.ask.{topic}", inner.prefix);
        let mut sub = inner
            .client
            .subscribe(subject)
            .await
            .map_err(|e| FabricError::Unavailable(e.to_string()))?;
        let client = inner.client.clone();
        let mut stop = inner.stop.subscribe();
        let task = tokio::spawn(async move {
            loop {
                let question = tokio::select! {
                    _ = stop.changed() => return,
                    q = sub.next() => match q {
                        Some(q) => q,
                        None => return,
                    },
                };
                let (Some(reply), Some(said)) = (question.reply, answer(question.payload)) else {
                    continue;
                };
                if let Err(e) = client.publish(reply, said).await {
                    tracing::debug!(error = %e, "answering a cluster question failed");
                }
            }
        });
        inner.own(task);
        Ok(())
    }

    /// Asks every process answering `topic` and returns the answers that arrive within
    /// `window` (at most `most`): the processes that did not answer by then are not heard.
    pub async fn ask_all(
        &self,
        topic: &str,
        question: Bytes,
        window: Duration,
        most: usize,
    ) -> Result<Vec<Bytes>, FabricError> {
        let inner = self.inner();
        let unavailable = |e: &dyn std::fmt::Display| FabricError::Unavailable(e.to_string());
        let inbox = inner.client.new_inbox();
        let mut answers = inner
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| unavailable(&e))?;
        inner
            .client
            .publish_with_reply(format!("{}.ask.{topic}", inner.prefix), inbox, question)
            .await
            .map_err(|e| unavailable(&e))?;
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while out.len() < most {
            match timeout_at(deadline, answers.next()).await {
                Ok(Some(m)) => out.push(m.payload),
                Ok(None) | Err(_) => break,
            }
        }
        let _ = answers.unsubscribe().await;
        Ok(out)
    }
}
