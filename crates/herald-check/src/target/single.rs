//! `--target single`: one `herald serve` on a fixed port and data dir, killed with `SIGKILL`
//! (a crash) or `SIGTERM` (a graceful restart) and started again on the same port and data.

use super::{restart, revive, FaultOutcome, ServerConf, Topology};
use crate::procs::{free_ports, herald_bin, Managed, Ready, Role};
use crate::verify::Violation;
use rand::rngs::StdRng;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;

/// How long a graceful shutdown may take before it is noted and the process killed.
const TERM_LIMIT: Duration = Duration::from_secs(20);

pub struct Single {
    server: Managed,
    topo: Arc<Topology>,
}

impl Single {
    pub async fn start(conf: &ServerConf<'_>) -> anyhow::Result<Self> {
        let port = free_ports(1)?[0];
        let data_dir = conf.run_dir.join("data");
        std::fs::create_dir_all(&data_dir)?;
        let base = format!("http://127.0.0.1:{port}");
        let mut server = Managed::new(
            "server",
            Role::Server,
            &herald_bin(conf.args.herald_bin.as_deref())?,
            vec![
                "serve".into(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--config".into(),
                conf.config_path.display().to_string(),
            ],
            conf.env(),
            conf.run_dir,
            Ready::Http(base),
        );
        server.start(Duration::from_secs(40)).await?;
        let topo = Arc::new(Topology {
            dispatchers: vec![server.shared.clone()],
            nodes: vec![server.shared.clone()],
            all: vec![server.shared.clone()],
        });
        Ok(Self { server, topo })
    }

    pub fn topology(&self) -> Arc<Topology> {
        self.topo.clone()
    }

    pub async fn inject_fault(&mut self, rng: &mut StdRng) -> FaultOutcome {
        let mut crashed = Vec::new();
        revive(&mut self.server, &mut crashed).await;
        let mut out = FaultOutcome {
            violations: crashed,
            victim: "server".into(),
            ..Default::default()
        };
        if rng.gen_bool(0.25) {
            out.kind = "sigterm server".into();
            if let Err(limit) = self.server.terminate(TERM_LIMIT).await {
                out.note = Some(format!(
                    "server did not exit within {limit:?} of SIGTERM (killed)"
                ));
            }
        } else {
            out.kind = "sigkill server".into();
            self.server.kill9().await;
        }
        // Sometimes a moment of downtime, so clients see refused connections too.
        if rng.gen_bool(0.5) {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..1500))).await;
        }
        restart(&mut self.server, &mut out).await;
        out
    }

    pub async fn ensure_up(&mut self) -> Vec<Violation> {
        let mut v = Vec::new();
        revive(&mut self.server, &mut v).await;
        v
    }

    pub async fn shutdown(mut self) -> Vec<String> {
        self.server.kill9().await;
        Vec::new()
    }
}
