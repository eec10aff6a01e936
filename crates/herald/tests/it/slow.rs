//! Slow consumers and stalled peers: a connection that reads nothing never grows the
//! server's memory. Ephemeral messages follow their namespace's policy; a peer that takes
//! nothing at all is cut by the write timeout. (Reliable overflow, which disconnects and
//! resumes, is `sse::slow_reader_is_disconnected_and_resumes_from_its_cursor`.)

use crate::common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A stream whose client reads its response head and then nothing (with the kernel's
/// default buffers: the server's capped send buffer is what makes the stall show).
async fn stalled_stream(server: &Server, channels: &[&str]) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    let mut stream = socket
        .connect(format!("127.0.0.1:{}", server.port).parse()?)
        .await?;
    let query: Vec<String> = channels.iter().map(|c| format!("channel={c}")).collect();
    let tok = token("slow", &["*"]);
    stream
        .write_all(
            format!(
                "GET /v1/sse?{}&token={tok} HTTP/1.1\r\nHost: x\r\n\r\n",
                query.join("&")
            )
            .as_bytes(),
        )
        .await?;
    let mut head = [0u8; 256];
    let n = tokio::time::timeout(WAIT, stream.read(&mut head)).await??;
    anyhow::ensure!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "stream refused: {}",
        String::from_utf8_lossy(&head[..n])
    );
    Ok(stream)
}

fn big(channel: &str, n: u64, ephemeral: bool) -> herald_client::Publish {
    let mut m = herald_client::Publish::new(
        channel,
        serde_json::json!({ "n": n, "pad": "x".repeat(32 * 1024) }),
    );
    m.ephemeral = ephemeral;
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_policies_and_the_stall_timeout() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(
        dir.path(),
        &Opts::default()
            .env("HERALD_QUEUE_CAP", "16")
            .env("HERALD_HEARTBEAT_SECS", "1")
            .env("HERALD_WRITE_TIMEOUT_MS", "1500")
            .config(
                r#"
                [namespaces.react]
                slow_consumer = "drop_oldest"
                [namespaces.typing]
                slow_consumer = "disconnect"
                "#,
            ),
    )?;
    let publisher = server.publisher();
    let _react = stalled_stream(&server, &["react:1"]).await?;
    let _typing = stalled_stream(&server, &["typing:1"]).await?;
    eventually(WAIT, "two streams", || async {
        server
            .metric("herald_connections")
            .await
            .is_ok_and(|v| v == 2.0)
    })
    .await?;
    for n in 0..200 {
        publisher.publish(&big("react:1", n, true)).await?;
        publisher.publish(&big("typing:1", n, true)).await?;
    }
    // drop_oldest keeps the connection and its queue bounded, replacing old values...
    assert!(server.metric("herald_ephemeral_evicted_total").await? >= 1.0);
    // ...disconnect closes the other one.
    eventually(WAIT, "ephemeral disconnect", || async {
        server
            .metric("herald_ephemeral_disconnects_total")
            .await
            .is_ok_and(|v| v >= 1.0)
    })
    .await?;
    // The peer that takes nothing is cut once its writes wait past the timeout.
    eventually(Duration::from_secs(15), "stalled peer cut", || async {
        server
            .metric("herald_stalled_disconnects_total")
            .await
            .is_ok_and(|v| v >= 1.0)
            && server
                .metric("herald_connections")
                .await
                .is_ok_and(|v| v == 0.0)
    })
    .await?;
    Ok(())
}
