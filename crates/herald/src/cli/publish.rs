//! `herald publish`.

use anyhow::Context;
use herald_client::{Client, Publish};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Server base URL.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:7070")]
    pub url: String,
    /// Publisher API key.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Channel to publish to, e.g. live:42.
    #[arg(long, short)]
    pub channel: String,
    /// The message: any JSON value.
    #[arg(long, short)]
    pub data: String,
    /// Event name (default "message").
    #[arg(long, short)]
    pub event: Option<String>,
    /// Dedupe retries with this key.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Skip the store: no seq, may be dropped or conflated.
    #[arg(long)]
    pub ephemeral: bool,
    /// With --ephemeral: a newer message with this key replaces an undelivered older one.
    #[arg(long)]
    pub conflation_key: Option<String>,
    /// Trace it: every hop through the cluster is recorded (`herald trace`).
    #[arg(long)]
    pub trace: bool,
    /// Trace it as a child of this W3C `traceparent` (your service's span).
    #[arg(long)]
    pub traceparent: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let data: serde_json::Value = serde_json::from_str(&args.data)
        .context("--data must be JSON (quote strings: '\"hi\"')")?;
    let mut client = Client::new(&args.url);
    if let Some(k) = args.api_key {
        client = client.with_api_key(k);
    }
    let msg = Publish {
        channel: args.channel,
        data,
        event: args.event,
        idempotency_key: args.idempotency_key,
        ephemeral: args.ephemeral,
        conflation_key: args.conflation_key,
        trace: args.trace,
        traceparent: args.traceparent,
    };
    let result = client.publish(&msg).await?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
