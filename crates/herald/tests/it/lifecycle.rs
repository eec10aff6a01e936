//! Process life: graceful shutdown, restart, CLI helpers, startup checks, secrets in logs.

use crate::common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

fn herald() -> Command {
    Command::new(env!("CARGO_BIN_EXE_herald"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_and_exits_then_restart_continues() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut server = Server::start(dir.path(), &Opts::default())?;
    let p = server.publisher();
    publish_n(&p, "live:s", 3).await?;
    let sc = server.subscriber(&["live:*"]);
    let mut sub = sc.subscribe(&["live:s"], None).await?;
    let (took, status) = server.terminate(Duration::from_secs(15))?;
    assert!(status.success(), "clean exit: {status}");
    assert!(took < Duration::from_secs(12), "bounded shutdown: {took:?}");
    // The stream ended (EOF) rather than hanging.
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match sub.next().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "stream ended at shutdown");
    let server = Server::start(dir.path(), &Opts::default())?;
    assert_eq!(
        server.publisher().publish(&msg("live:s", 9)).await?.seq,
        Some(4)
    );
    Ok(())
}

#[test]
fn every_command_has_help() -> anyhow::Result<()> {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["publish", "--help"],
        vec!["subscribe", "--help"],
        vec!["token", "--help"],
    ] {
        let out = herald().args(&args).output()?;
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
    Ok(())
}

#[test]
fn refuses_to_start_insecure_without_dev() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = herald()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("HERALD_API_KEYS")
        .env_remove("HERALD_JWT_SECRET")
        .env_remove("HERALD_DEV")
        .stdin(Stdio::null())
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HERALD_API_KEYS") && err.contains("--dev"),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_is_anonymous_and_says_so() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(
        dir.path(),
        &Opts {
            dev: true,
            ..Opts::default()
        },
    )?;
    let anon = server.anonymous();
    let mut sub = anon.subscribe(&["any:thing"], None).await?;
    assert_eq!(anon.publish(&msg("any:thing", 1)).await?.seq, Some(1));
    assert_eq!(pos(&next_event(&mut sub, WAIT).await?).1, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_token_subscribe_and_publish_work_together() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &Opts::default())?;
    let tok = herald()
        .args(["token", "--sub", "carol", "--channel", "live:*"])
        .env("HERALD_JWT_SECRET", SECRET)
        .output()?;
    assert!(tok.status.success());
    let tok = String::from_utf8(tok.stdout)?.trim().to_owned();
    let subscriber = herald()
        .args([
            "subscribe",
            "--channel",
            "live:cli",
            "--count",
            "2",
            "--url",
            &server.base,
        ])
        .env("HERALD_TOKEN", &tok)
        .stdout(Stdio::piped())
        .spawn()?;
    eventually(WAIT, "cli subscriber joined", || async {
        server.metric("herald_subscriptions").await.unwrap_or(0.0) >= 1.0
    })
    .await?;
    for n in 1..=2 {
        let out = herald()
            .args([
                "publish",
                "--channel",
                "live:cli",
                "--event",
                "comment",
                "--url",
                &server.base,
            ])
            .args(["--data", &format!("{{\"n\":{n}}}")])
            .env("HERALD_API_KEY", API_KEY)
            .output()?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(r["seq"], n);
    }
    let out = tokio::task::spawn_blocking(move || subscriber.wait_with_output()).await??;
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["event"], "comment");
    assert_eq!(lines[1]["data"]["data"]["n"], 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("stderr.log");
    let data = dir.path().join("data");
    let mut child = herald()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("HERALD_API_KEYS", API_KEY)
        .env("HERALD_JWT_SECRET", SECRET)
        .env("HERALD_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("stdout"))?;
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout).lines().next()
    })
    .await?
    .ok_or_else(|| anyhow::anyhow!("no output"))??;
    let base = line
        .trim_start_matches("herald listening on ")
        .trim()
        .to_owned();
    let tok = token("u1", &["live:*"]);
    let client = herald_client::Client::new(&base).with_token(&tok);
    let mut sub = client.subscribe(&["live:log"], None).await?;
    let _ = reqwest::get(format!("{base}/v1/sse?channel=live:log&token={tok}")).await?;
    herald_client::Client::new(&base)
        .with_api_key(API_KEY)
        .publish(&msg("live:log", 1))
        .await?;
    let _ = next_event(&mut sub, WAIT).await?;
    let _ = child.kill();
    let _ = child.wait();
    let logged = std::fs::read_to_string(&log)?;
    assert!(!logged.is_empty(), "trace logging produced output");
    assert!(!logged.contains(&tok), "token leaked into logs");
    assert!(!logged.contains(API_KEY), "API key leaked into logs");
    assert!(!logged.contains(SECRET), "JWT secret leaked into logs");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_subscribe_resumes_across_a_server_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let opts = Opts::default()
        .env("HERALD_RETRY_MS", "200")
        .env("HERALD_RETRY_JITTER_MS", "100");
    let mut server = Server::start(dir.path(), &opts)?;
    let port = server.port;
    let mut subscriber = herald()
        .args([
            "subscribe",
            "--channel",
            "live:cr",
            "--count",
            "4",
            "--url",
            &server.base,
        ])
        .env("HERALD_TOKEN", token("u1", &["live:*"]))
        .stdout(Stdio::piped())
        .spawn()?;
    eventually(WAIT, "cli subscriber joined", || async {
        server.metric("herald_subscriptions").await.unwrap_or(0.0) >= 1.0
    })
    .await?;
    publish_n(&server.publisher(), "live:cr", 2).await?;
    // Crash, restart on the same port, publish while the subscriber is away.
    server.kill9();
    let restarted = Server::start(
        dir.path(),
        &Opts {
            listen: Some(format!("127.0.0.1:{port}")),
            ..opts
        },
    )?;
    publish_n(&restarted.publisher(), "live:cr", 2).await?;
    let waited = tokio::task::spawn_blocking(move || -> anyhow::Result<std::process::Output> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if subscriber.try_wait()?.is_some() {
                return Ok(subscriber.wait_with_output()?);
            }
            if std::time::Instant::now() > deadline {
                let _ = subscriber.kill();
                anyhow::bail!("subscriber did not receive 4 events");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await??;
    let seqs: Vec<u64> = String::from_utf8(waited.stdout)?
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .map(|v| v["data"]["seq"].as_u64().unwrap_or(0))
        })
        .collect::<Result<_, _>>()?;
    assert_eq!(
        seqs,
        vec![1, 2, 3, 4],
        "resumed after the restart with nothing lost or repeated"
    );
    Ok(())
}
