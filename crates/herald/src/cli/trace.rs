//! `herald trace`: the journey of one traced message through the cluster, hop by hop, with
//! the time each step took.

use herald_client::{Client, Journey, TraceOf};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Server base URL (any dispatcher or node of the cluster).
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:7070")]
    pub url: String,
    /// Publisher API key.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The message's channel (with SEQ), or its trace id (alone).
    pub channel_or_trace_id: String,
    /// The message's position in its channel.
    pub seq: Option<u64>,
    /// How long the other processes have to answer, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub wait_ms: u64,
    /// Print the journey as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut client = Client::new(&args.url);
    if let Some(k) = args.api_key {
        client = client.with_api_key(k);
    }
    let of = match args.seq {
        Some(seq) => TraceOf::Position {
            channel: args.channel_or_trace_id,
            seq,
        },
        None => TraceOf::Id(args.channel_or_trace_id),
    };
    let journey = client
        .trace(&of, Some(Duration::from_millis(args.wait_ms)))
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&journey))?);
    } else {
        print!("{}", render(&journey));
    }
    Ok(())
}

fn to_json(j: &Journey) -> serde_json::Value {
    serde_json::json!({
        "trace_id": j.trace_id,
        "channel": j.channel,
        "seq": j.seq,
        "processes": j.processes,
        "hops": j.hops,
    })
}

/// One line per hop: milliseconds since the first hop, since the previous one, the
/// process, the step and its counts.
fn render(j: &Journey) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let seq = j.seq.map(|s| format!(" seq {s}")).unwrap_or_default();
    let _ = writeln!(
        out,
        "trace {} — {}{seq}, {} processes",
        j.trace_id,
        j.channel,
        j.processes.len()
    );
    let _ = writeln!(out, "{:>10} {:>10}  {:<24} step", "at ms", "+ms", "process");
    let first = j.hops.first().map_or(0, |h| h.at_us);
    let mut prev = first;
    for h in &j.hops {
        let since = h.at_us.saturating_sub(first) as f64 / 1000.0;
        let delta = h.at_us.saturating_sub(prev) as f64 / 1000.0;
        prev = h.at_us;
        let step = serde_json::to_value(h.step)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let mut extra: Vec<String> = h.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if let Some(n) = &h.note {
            extra.push(n.clone());
        }
        let _ = writeln!(
            out,
            "{since:>10.3} {delta:>10.3}  {:<24} {step} {}",
            format!("{} ({})", h.process, h.role),
            extra.join(" ")
        );
    }
    out
}
