//! Role accounting: the CPU seconds and resident memory of the processes behind each role of
//! a cluster (dispatchers, nodes, NATS, Cassandra), read from their own /proc entries and
//! summed over each role's pids. Roles come from `--role NAME=PID[,PID…]` or from the pid
//! files `scripts/cluster-up` writes (`--cluster-dir`).

use anyhow::{bail, Context};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A named group of processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub pids: Vec<u32>,
}

/// Parses `NAME=PID[,PID…]`.
pub fn parse_role(spec: &str) -> anyhow::Result<Role> {
    let (name, pids) = spec
        .split_once('=')
        .with_context(|| format!("--role {spec:?}: expected NAME=PID[,PID…]"))?;
    let name = name.trim();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        bail!("--role {spec:?}: the name must be letters, digits, - and _");
    }
    let pids = pids
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<u32>()
                .with_context(|| format!("--role {spec:?}: {p:?} is not a pid"))
        })
        .collect::<anyhow::Result<Vec<u32>>>()?;
    Ok(Role {
        name: name.to_owned(),
        pids,
    })
}

fn read_pid(path: &Path) -> anyhow::Result<u32> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{}: not a pid: {:?}", path.display(), text.trim()))
}

/// `KEY=VALUE` lines of `cluster.env` (scripts/cluster-up records NATS_DIR and CASSANDRA_DIR).
fn cluster_env(dir: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(dir.join("cluster.env"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The roles of a cluster started by scripts/cluster-up: `dispatcher-*.pid` and `node-*.pid`
/// in `dir`, `nats.pid` in NATS_DIR and `cassandra.pid` in CASSANDRA_DIR (from `cluster.env`,
/// default `dir/nats` and `dir/cassandra`). Roles without pid files are left out.
pub fn from_cluster_dir(dir: &Path) -> anyhow::Result<Vec<Role>> {
    let env = cluster_env(dir);
    let sub = |key: &str, default: &str| {
        env.get(key)
            .filter(|v| !v.is_empty())
            .map(|v| Path::new(v).to_path_buf())
            .unwrap_or_else(|| dir.join(default))
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the cluster dir {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let mut roles = Vec::new();
    for (role, prefix) in [("dispatcher", "dispatcher-"), ("node", "node-")] {
        let mut pids = Vec::new();
        for f in &files {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.starts_with(prefix) && name.ends_with(".pid") {
                pids.push(read_pid(f)?);
            }
        }
        if !pids.is_empty() {
            roles.push(Role {
                name: role.to_owned(),
                pids,
            });
        }
    }
    for (role, path) in [
        ("nats", sub("NATS_DIR", "nats").join("nats.pid")),
        (
            "cassandra",
            sub("CASSANDRA_DIR", "cassandra").join("cassandra.pid"),
        ),
    ] {
        if path.is_file() {
            roles.push(Role {
                name: role.to_owned(),
                pids: vec![read_pid(&path)?],
            });
        }
    }
    if roles.is_empty() {
        bail!("no pid files in {} (is the cluster up?)", dir.display());
    }
    Ok(roles)
}

/// The node of the cluster in `dir` whose command line says `--listen addr`.
pub fn pid_listening_at(dir: &Path, addr: std::net::SocketAddr) -> anyhow::Result<u32> {
    let nodes = from_cluster_dir(dir)?
        .into_iter()
        .filter(|r| r.name == "node")
        .flat_map(|r| r.pids);
    for pid in nodes {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let listens = args
            .windows(2)
            .any(|w| w[0] == b"--listen" && w[1] == addr.to_string().as_bytes());
        if listens {
            return Ok(pid);
        }
    }
    bail!(
        "no running node in {} listens at {addr} (give --victim-pid)",
        dir.display()
    )
}

/// The roles of `--cluster-dir` and `--role` (a `--role` replaces a role of the same name).
/// Every pid must be a running process now.
pub fn resolve(cluster_dir: Option<&Path>, specs: &[String]) -> anyhow::Result<Vec<Role>> {
    let mut roles = match cluster_dir {
        Some(d) => from_cluster_dir(d)?,
        None => Vec::new(),
    };
    for spec in specs {
        let r = parse_role(spec)?;
        roles.retain(|x| x.name != r.name);
        roles.push(r);
    }
    for r in &roles {
        for pid in &r.pids {
            crate::procstat::cpu_seconds(*pid)
                .with_context(|| format!("role {}: pid {pid} is not a running process", r.name))?;
        }
    }
    Ok(roles)
}

/// CPU seconds and RSS of every pid, at one moment.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    per_pid: HashMap<u32, (f64, u64)>,
}

pub fn sample(roles: &[Role]) -> Sample {
    let mut per_pid = HashMap::new();
    for pid in roles.iter().flat_map(|r| &r.pids) {
        let cpu = crate::procstat::cpu_seconds(*pid);
        let rss = crate::procstat::rss_bytes(*pid);
        if let (Ok(cpu), Ok(rss)) = (cpu, rss) {
            per_pid.insert(*pid, (cpu, rss));
        }
    }
    Sample { per_pid }
}

/// One role over the measured window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RoleReport {
    pub pids: Vec<u32>,
    /// utime + stime over the window, summed over the pids.
    pub cpu_s: f64,
    /// RSS summed over the pids before the run and at the end of the window.
    pub rss_before: u64,
    pub rss_after: u64,
    pub cpu_s_per_1k_publishes: Option<f64>,
    pub cpu_s_per_1k_deliveries: Option<f64>,
    /// Pids that could not be read at some sample (exited): left out of the sums.
    pub gone: Vec<u32>,
}

/// Per role: CPU between `from` and `to`, RSS at `before` and `to`, and CPU per 1,000
/// `publishes` / `deliveries` (None when there were none).
pub fn report(
    roles: &[Role],
    before: &Sample,
    from: &Sample,
    to: &Sample,
    publishes: u64,
    deliveries: u64,
) -> BTreeMap<String, RoleReport> {
    let per_1k = |cpu: f64, n: u64| (n > 0).then(|| cpu * 1000.0 / n as f64);
    let mut out = BTreeMap::new();
    for r in roles {
        let mut rep = RoleReport {
            pids: r.pids.clone(),
            ..RoleReport::default()
        };
        for pid in &r.pids {
            match (
                before.per_pid.get(pid),
                from.per_pid.get(pid),
                to.per_pid.get(pid),
            ) {
                (Some(b), Some(f), Some(t)) => {
                    rep.cpu_s += (t.0 - f.0).max(0.0);
                    rep.rss_before += b.1;
                    rep.rss_after += t.1;
                }
                _ => rep.gone.push(*pid),
            }
        }
        rep.cpu_s_per_1k_publishes = per_1k(rep.cpu_s, publishes);
        rep.cpu_s_per_1k_deliveries = per_1k(rep.cpu_s, deliveries);
        out.insert(r.name.clone(), rep);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_role_specs() {
        assert_eq!(
            parse_role("node=21, 22,23").unwrap(),
            Role {
                name: "node".into(),
                pids: vec![21, 22, 23]
            }
        );
        assert!(parse_role("node").is_err());
        assert!(parse_role("=1").is_err());
        assert!(parse_role("node=x").is_err());
        assert!(parse_role("a b=1").is_err());
    }

    #[test]
    fn reads_cluster_dir_pid_files() {
        let dir = std::env::temp_dir().join(format!("herald-bench-roles-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("nats")).unwrap();
        let other = dir.join("elsewhere");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(dir.join("dispatcher-0.pid"), "11\n").unwrap();
        std::fs::write(dir.join("dispatcher-1.pid"), "12\n").unwrap();
        std::fs::write(dir.join("node-0.pid"), "21\n").unwrap();
        std::fs::write(dir.join("dispatcher-0.log"), "x").unwrap();
        std::fs::write(dir.join("nats").join("nats.pid"), "31").unwrap();
        std::fs::write(other.join("cassandra.pid"), "41\n").unwrap();
        std::fs::write(
            dir.join("cluster.env"),
            format!("NATS_PORT=4222\nCASSANDRA_DIR={}\n", other.display()),
        )
        .unwrap();
        let roles = from_cluster_dir(&dir).unwrap();
        let got: Vec<(&str, &[u32])> = roles
            .iter()
            .map(|r| (r.name.as_str(), r.pids.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("dispatcher", &[11, 12][..]),
                ("node", &[21][..]),
                ("nats", &[31][..]),
                ("cassandra", &[41][..]),
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sums_cpu_and_rss_per_role() {
        let me = std::process::id();
        let roles = vec![Role {
            name: "me".into(),
            pids: vec![me, u32::MAX],
        }];
        let a = sample(&roles);
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = sample(&roles);
        let r = &report(&roles, &a, &a, &b, 2000, 0)["me"];
        assert!(r.cpu_s >= 0.0);
        assert!(r.rss_before > 0 && r.rss_after > 0);
        assert_eq!(r.gone, vec![u32::MAX]);
        assert!(r.cpu_s_per_1k_publishes.is_some());
        assert!(r.cpu_s_per_1k_deliveries.is_none());
    }
}
