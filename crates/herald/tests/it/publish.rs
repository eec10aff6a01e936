//! Publish: batch, history paging, idempotency, namespaces, user inboxes.

use crate::common::*;
use herald_client::{Client, Publish};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_assigns_per_channel_seqs_and_history_pages() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &Opts::default())?;
    let p = server.publisher();
    let batch: Vec<Publish> = (0..25)
        .map(|n| msg(if n % 5 == 0 { "live:other" } else { "live:h" }, n))
        .collect();
    let results = p.publish_batch(&batch).await?;
    let h_seqs: Vec<u64> = results
        .iter()
        .filter(|r| r.channel == "live:h")
        .filter_map(|r| r.seq)
        .collect();
    assert_eq!(h_seqs, (1..=20).collect::<Vec<_>>());
    let epochs: std::collections::HashSet<u64> = results
        .iter()
        .filter(|r| r.channel == "live:h")
        .filter_map(|r| r.epoch)
        .collect();
    assert_eq!(epochs.len(), 1);
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let page = p.history("live:h", after, 7).await?;
        seen.extend(page.messages.iter().map(|m| m.seq));
        after = page.next_after;
        if !page.has_more {
            break;
        }
    }
    assert_eq!(seen, (1..=20).collect::<Vec<_>>());
    let page = p.history("live:h", 0, 1).await?;
    assert_eq!(page.messages[0].data.get(), r#"{"n":1}"#);
    assert_eq!(page.messages[0].event, "message");
    assert_eq!((page.first_seq, page.last_seq), (1, 20));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_applies_once_even_across_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut server = Server::start(dir.path(), &Opts::default())?;
    let p = server.publisher();
    let mut m = msg("live:idem", 1);
    m.idempotency_key = Some("order-77".into());
    let first = p.publish(&m).await?;
    let again = p.publish(&m).await?;
    assert_eq!((first.seq, first.duplicate), (Some(1), false));
    assert_eq!(
        (again.seq, again.epoch, again.duplicate),
        (Some(1), first.epoch, true)
    );
    // Twice inside one batch is applied once as well.
    let mut k2 = msg("live:idem", 2);
    k2.idempotency_key = Some("order-78".into());
    let r = p.publish_batch(&[k2.clone(), k2.clone()]).await?;
    assert_eq!(
        (r[0].seq, r[1].seq, r[1].duplicate),
        (Some(2), Some(2), true)
    );
    server.terminate(Duration::from_secs(15))?;
    let server = Server::start(dir.path(), &Opts::default())?;
    let p = server.publisher();
    let after_restart = p.publish(&m).await?;
    assert_eq!(
        (after_restart.seq, after_restart.duplicate),
        (Some(1), true)
    );
    assert_eq!(p.history("live:idem", 0, 10).await?.messages.len(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_policies_apply() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = r#"
        [namespaces.react]
        ephemeral_only = true
        [namespaces.tiny]
        max_payload_bytes = 32
        [namespaces.billing]
        publishers = ["billing"]
    "#;
    let opts = Opts::default().config(config).env(
        "HERALD_API_KEYS",
        format!("{API_KEY},billing:billing-key-123"),
    );
    let server = Server::start(dir.path(), &opts)?;
    let p = server.publisher();
    let err = p.publish(&msg("react:1", 1)).await.expect_err("refused");
    assert_eq!(
        (err.status(), err.code()),
        (Some(400), Some("ephemeral_only"))
    );
    let mut eph = msg("react:1", 1);
    eph.ephemeral = true;
    assert!(p.publish(&eph).await.is_ok());
    let big = Publish::new("tiny:1", serde_json::json!("x".repeat(40)));
    let err = p.publish(&big).await.expect_err("refused");
    assert_eq!(
        (err.status(), err.code()),
        (Some(413), Some("payload_too_large"))
    );
    assert!(p.publish(&msg("tiny:1", 1)).await.is_ok());
    let err = p.publish(&msg("billing:1", 1)).await.expect_err("refused");
    assert_eq!(
        (err.status(), err.code()),
        (Some(403), Some("publisher_not_allowed"))
    );
    let billing = Client::new(&server.base).with_api_key("billing-key-123");
    assert_eq!(billing.publish(&msg("billing:1", 1)).await?.seq, Some(1));
    // A key reads only the namespaces it may publish to: history and acks alike.
    let err = p.history("billing:1", 0, 10).await.expect_err("refused");
    assert_eq!(
        (err.status(), err.code()),
        (Some(403), Some("publisher_not_allowed"))
    );
    let acks = reqwest::Client::new()
        .get(server.url("/v1/channels/billing:1/acks"))
        .bearer_auth(API_KEY)
        .send()
        .await?;
    assert_eq!(acks.status(), 403);
    assert_eq!(billing.history("billing:1", 0, 10).await?.messages.len(), 1);
    assert!(p.history("tiny:1", 0, 10).await.is_ok());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_inbox_belongs_to_its_user() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &Opts::default())?;
    let p = server.publisher();
    p.publish(&msg("user:bob", 1)).await?;
    let bob = Client::new(&server.base).with_token(token("bob", &[]));
    let mut sub = bob
        .subscribe(
            &["user:bob"],
            Some(&{
                let mut c = herald_proto::Cursor::default();
                c.set("user:bob", herald_proto::Position::default());
                c.encode()
            }),
        )
        .await?;
    assert_eq!(
        pos(&next_event(&mut sub, WAIT).await?),
        ("user:bob".into(), 1)
    );
    let err = bob
        .subscribe(&["user:alice"], None)
        .await
        .expect_err("refused");
    assert_eq!(
        (err.status(), err.code()),
        (Some(403), Some("channel_forbidden"))
    );
    // History: a subscriber token works for its own channels only.
    assert_eq!(bob.history("user:bob", 0, 10).await?.messages.len(), 1);
    let err = bob.history("user:alice", 0, 10).await.expect_err("refused");
    assert_eq!(err.code(), Some("channel_forbidden"));
    Ok(())
}
