//! The task that sends settled traces to the collector: it owns the OTLP exporter, wakes
//! on a tick, and stops (sending what is left) when told.

use crate::client::Client;
use crate::convert::span_data;
use crate::{traces_url, OtlpConfig, OtlpError};
use herald_trace::Journal;
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SpanExporter as _;
use opentelemetry_sdk::Resource;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often settled traces are looked for.
const TICK: Duration = Duration::from_millis(250);
/// Spans per OTLP request.
const BATCH: usize = 512;
/// How long one export may take (the collector is slow or gone: the spans are dropped).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long stopping may take to send what is left.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the exporter did, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub spans_exported: AtomicU64,
    /// Spans the collector did not take (unreachable, refused, timed out).
    pub spans_failed: AtomicU64,
}

/// The running exporter; [`stop`](Self::stop) sends what is left and ends it.
pub struct Exporter {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    pub counters: Arc<Counters>,
}

impl Exporter {
    /// Starts sending `journal`'s settled traces (a journal made with
    /// [`Journal::exporting`]) to the collector of `config`.
    pub fn start(journal: Arc<Journal>, config: &OtlpConfig) -> Result<Self, OtlpError> {
        let url = traces_url(&config.endpoint)?;
        let client = Client::new(EXPORT_TIMEOUT, config.ca_pem.as_deref())?;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| OtlpError::Client(e.to_string()))?;
        exporter.set_resource(
            &Resource::builder()
                .with_service_name(config.service.clone())
                .with_attributes([
                    KeyValue::new("service.instance.id", config.process.clone()),
                    KeyValue::new("herald.role", config.role.clone()),
                ])
                .build(),
        );
        let scope = InstrumentationScope::builder("herald")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(journal, exporter, scope, counters.clone(), stopped));
        Ok(Self {
            stop,
            task,
            counters,
        })
    }

    /// Sends every trace held, settled or not, and ends the task.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(STOP_TIMEOUT, &mut task).await.is_err() {
            task.abort();
        }
    }
}

async fn run(
    journal: Arc<Journal>,
    exporter: opentelemetry_otlp::SpanExporter,
    scope: InstrumentationScope,
    counters: Arc<Counters>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stopped.changed() => true,
        };
        let until = if last {
            u64::MAX
        } else {
            herald_trace::now_us()
        };
        let spans = journal.settled(until);
        for chunk in spans.chunks(BATCH) {
            let batch = chunk.iter().map(|s| span_data(s, &scope)).collect();
            let n = chunk.len() as u64;
            match exporter.export(batch).await {
                Ok(()) => {
                    counters.spans_exported.fetch_add(n, Relaxed);
                    if failing {
                        tracing::info!("OTLP export works again");
                        failing = false;
                    }
                }
                Err(e) => {
                    counters.spans_failed.fetch_add(n, Relaxed);
                    // Said once per outage, not once per batch.
                    if !failing {
                        tracing::warn!(error = %e, "OTLP export failed; spans are dropped until it works");
                        failing = true;
                    }
                }
            }
        }
        if last {
            let _ = exporter.shutdown();
            return;
        }
    }
}
