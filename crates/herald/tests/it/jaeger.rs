//! A real Jaeger (all-in-one, in-memory) for the OpenTelemetry tests: started on free
//! loopback ports from the binary `HERALD_JAEGER` names (`scripts/jaeger-build` builds it
//! from the Go module proxy), asked for traces over its HTTP query API.
//!
//! Without `HERALD_JAEGER` the tests fail, unless `HERALD_SKIP_JAEGER=1` says to skip them.

use anyhow::{bail, ensure, Context};
use serde::Deserialize;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Jaeger {
    child: Child,
    _dir: tempfile::TempDir,
    /// The OTLP/HTTP base URL spans are sent to.
    pub otlp: String,
    query: String,
    http: reqwest::Client,
}

/// One trace as Jaeger's query API returns it.
#[derive(Debug, Deserialize)]
pub struct Trace {
    pub spans: Vec<Span>,
    pub processes: HashMap<String, Process>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    #[serde(rename = "spanID")]
    pub span_id: String,
    pub operation_name: String,
    #[serde(default)]
    pub references: Vec<Reference>,
    /// Microseconds since the Unix epoch.
    pub start_time: u64,
    #[serde(default)]
    pub tags: Vec<Tag>,
    #[serde(default)]
    pub logs: Vec<Log>,
    #[serde(rename = "processID")]
    pub process_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reference {
    pub ref_type: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
}

#[derive(Debug, Deserialize)]
pub struct Tag {
    pub key: String,
    pub value: serde_json::Value,
}

#[derive(Debug, Deserialize)]
pub struct Log {
    pub timestamp: u64,
    pub fields: Vec<Tag>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    pub service_name: String,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

impl Span {
    pub fn tag(&self, key: &str) -> Option<&serde_json::Value> {
        self.tags.iter().find(|t| t.key == key).map(|t| &t.value)
    }

    /// The span this one is a child of.
    pub fn parent(&self) -> Option<&str> {
        self.references
            .iter()
            .find(|r| r.ref_type == "CHILD_OF")
            .map(|r| r.span_id.as_str())
    }

    /// The names of its events (Herald's hops), in time order.
    pub fn events(&self) -> Vec<String> {
        let mut logs: Vec<&Log> = self.logs.iter().collect();
        logs.sort_by_key(|l| l.timestamp);
        logs.iter()
            .filter_map(|l| {
                l.fields
                    .iter()
                    .find(|f| f.key == "event")
                    .and_then(|f| f.value.as_str())
                    .map(str::to_owned)
            })
            .collect()
    }
}

impl Trace {
    pub fn named<'a>(&'a self, op: &str) -> Vec<&'a Span> {
        self.spans
            .iter()
            .filter(|s| s.operation_name == op)
            .collect()
    }

    /// `service.instance.id` of the process that sent `span` (Herald's process name).
    pub fn instance(&self, span: &Span) -> Option<String> {
        let p = self.processes.get(&span.process_id)?;
        p.tags
            .iter()
            .find(|t| t.key == "service.instance.id")
            .and_then(|t| t.value.as_str())
            .map(str::to_owned)
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

const CONFIG: &str = r#"
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    traces:
      level: none
    logs:
      level: error
extensions:
  jaeger_query:
    storage:
      traces: mem
    http:
      endpoint: 127.0.0.1:QUERY
    grpc:
      endpoint: 127.0.0.1:GRPC
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:OTLP
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
"#;

impl Jaeger {
    /// A running Jaeger; `None` when skipped with `HERALD_SKIP_JAEGER=1`.
    pub async fn start(test: &str) -> anyhow::Result<Option<Jaeger>> {
        let bin = match std::env::var("HERALD_JAEGER") {
            Ok(b) if !b.is_empty() => b,
            _ if std::env::var("HERALD_SKIP_JAEGER").as_deref() == Ok("1") => {
                eprintln!("{test}: skipped (HERALD_SKIP_JAEGER=1 and no HERALD_JAEGER)");
                return Ok(None);
            }
            _ => bail!(
                "{test} needs Jaeger: set HERALD_JAEGER to its binary (scripts/jaeger-build \
                 builds it and prints the path), or HERALD_SKIP_JAEGER=1 to skip"
            ),
        };
        // A port taken between choosing and binding makes Jaeger exit: choose again.
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(&bin).await {
                Ok(j) => return Ok(Some(j)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("Jaeger did not start")))
    }

    async fn try_start(bin: &str) -> anyhow::Result<Jaeger> {
        let (otlp, query, grpc) = (free_port()?, free_port()?, free_port()?);
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("jaeger.yaml");
        std::fs::write(
            &config,
            CONFIG
                .replace("QUERY", &query.to_string())
                .replace("GRPC", &grpc.to_string())
                .replace("OTLP", &otlp.to_string()),
        )?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        let mut j = Jaeger {
            child,
            _dir: dir,
            otlp: format!("http://127.0.0.1:{otlp}"),
            query: format!("http://127.0.0.1:{query}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = j.child.try_wait()? {
                bail!("Jaeger exited: {status}");
            }
            let services = j.http.get(format!("{}/api/services", j.query)).send().await;
            let otlp_up = tokio::net::TcpStream::connect(("127.0.0.1", otlp))
                .await
                .is_ok();
            if matches!(services, Ok(ref r) if r.status().is_success()) && otlp_up {
                return Ok(j);
            }
            ensure!(Instant::now() < deadline, "Jaeger not ready in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The trace `trace_id` once `done` says it is complete, polled until `within`.
    pub async fn trace_until(
        &self,
        trace_id: &str,
        within: Duration,
        done: impl Fn(&Trace) -> bool,
    ) -> anyhow::Result<Trace> {
        let deadline = Instant::now() + within;
        let mut last = String::from("nothing yet");
        loop {
            let r = self
                .http
                .get(format!("{}/api/traces/{trace_id}", self.query))
                .send()
                .await?;
            if r.status().is_success() {
                #[derive(Deserialize)]
                struct Answer {
                    data: Vec<Trace>,
                }
                let a: Answer = r.json().await.context("Jaeger's trace answer")?;
                if let Some(t) = a.data.into_iter().next() {
                    if done(&t) {
                        return Ok(t);
                    }
                    last = format!("{t:#?}");
                }
            }
            ensure!(
                Instant::now() < deadline,
                "trace {trace_id} not complete in Jaeger within {within:?}; last seen: {last}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
