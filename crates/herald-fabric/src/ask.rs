//! Talk between the processes of a cluster over NATS, beside the messages: questions to
//! every process ("what do you know of this traced message?"), answered from what each
//! holds and gathered within a window; and news told to every process (presence counts).
//! Subjects are `{prefix}.ask.{topic}` and `{prefix}.tell.{topic}`, apart from channels'.

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

/// News told to every process listening on a topic (see [`NatsFabric::teller`]).
#[derive(Clone)]
pub struct Teller(tokio::sync::mpsc::Sender<Bytes>);

impl Teller {
    /// Queues `news`; when a few are already waiting it is dropped (the next says it again).
    pub fn tell(&self, news: Bytes) -> bool {
        self.0.try_send(news).is_ok()
    }
}

/// News waiting to be sent, per teller.
const TELL_QUEUE: usize = 8;

impl NatsFabric {
    /// A sender of news on `topic`; its task ends with the fabric.
    pub fn teller(&self, topic: &str) -> Teller {
        let inner = self.inner();
        let subject = format!("{}.tell.{topic}", inner.prefix);
        let client = inner.client.clone();
        let mut stop = inner.stop.subscribe();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(TELL_QUEUE);
        inner.own(tokio::spawn(async move {
            loop {
                let news = tokio::select! {
                    _ = stop.changed() => return,
                    n = rx.recv() => match n {
                        Some(n) => n,
                        None => return,
                    },
                };
                if let Err(e) = client.publish(subject.clone(), news).await {
                    tracing::debug!(error = %e, "telling the cluster failed");
                }
            }
        }));
        Teller(tx)
    }

    /// Hands every piece of news told on `topic` (by any process, this one included) to
    /// `hear`, until the fabric shuts down.
    pub async fn listen(
        &self,
        topic: &str,
        hear: Arc<dyn Fn(Bytes) + Send + Sync>,
    ) -> Result<(), FabricError> {
        let inner = self.inner();
        let mut sub = inner
            .client
            .subscribe(format!("{}.tell.{topic}", inner.prefix))
            .await
            .map_err(|e| FabricError::Unavailable(e.to_string()))?;
        let mut stop = inner.stop.subscribe();
        inner.own(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    m = sub.next() => match m {
                        Some(m) => hear(m.payload),
                        None => return,
                    },
                }
            }
        }));
        Ok(())
    }
}
