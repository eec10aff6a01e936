//! `herald subscribe`: prints each event as one JSON line, and reconnects with the last
//! event id after the stream drops, like a browser's EventSource.

use herald_client::{Client, ClientError};
use rand::Rng;
use std::io::Write;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Server base URL.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:7070")]
    pub url: String,
    /// Subscriber token (see `herald token`).
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Channel to follow; repeat for several.
    #[arg(long = "channel", short, required = true)]
    pub channels: Vec<String>,
    /// Resume after this event id.
    #[arg(long)]
    pub last_event_id: Option<String>,
    /// Exit after this many events.
    #[arg(long)]
    pub count: Option<u64>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut client = Client::new(&args.url);
    if let Some(t) = &args.token {
        client = client.with_token(t);
    }
    let channels: Vec<&str> = args.channels.iter().map(String::as_str).collect();
    let mut last = args.last_event_id.clone();
    let mut seen = 0u64;
    let mut retry_ms = 1000u64;
    loop {
        match client.subscribe(&channels, last.as_deref()).await {
            Ok(mut sub) => {
                loop {
                    match sub.next().await {
                        Ok(Some(ev)) => {
                            let line = serde_json::json!({
                                "id": ev.id,
                                "event": ev.event,
                                "data": serde_json::from_str::<serde_json::Value>(&ev.data)
                                    .unwrap_or(serde_json::Value::String(ev.data.clone())),
                            });
                            let mut out = std::io::stdout().lock();
                            writeln!(out, "{line}")?;
                            out.flush()?;
                            seen += 1;
                            if args.count.is_some_and(|c| seen >= c) {
                                return Ok(());
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            eprintln!("stream error: {e}");
                            break;
                        }
                    }
                }
                last = sub.last_event_id().map(str::to_owned).or(last);
                if let Some(r) = sub.retry() {
                    retry_ms = r;
                }
            }
            // The server refused (bad token, forbidden channel, bad cursor): retrying will
            // not help, exactly as EventSource gives up on such answers.
            Err(ClientError::Status {
                status,
                code,
                message,
            }) if status < 500 => {
                anyhow::bail!("server refused the stream: {status} {code}: {message}");
            }
            Err(e) => eprintln!("connect failed: {e}"),
        }
        let jitter = rand::thread_rng().gen_range(0..=retry_ms / 2);
        tokio::time::sleep(Duration::from_millis(retry_ms + jitter)).await;
    }
}
