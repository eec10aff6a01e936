//! The `herald` binary: `serve` runs the embedded single-process server; `dispatcher`,
//! `node` and `migrate` run a cluster over ScyllaDB and NATS; `publish`, `subscribe`,
//! `token`, `drain` and `bench` are the command-line helpers.

// No unsafe code here but the symbol jemalloc reads its options from.
#![deny(unsafe_code)]

mod cli;

use herald_server::{cluster, config, serve};

use clap::{Parser, Subcommand};

// jemalloc returns freed memory and fragments less than glibc's malloc with many small,
// long-lived allocations per connection: roughly a third less RSS per idle stream.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options (read by jemalloc itself, by this symbol name). One arena:
/// per-connection allocations come from a couple of threads, and spreading them over the
/// default 4 arenas per core only adds partly used pages. `_RJEM_MALLOC_CONF` overrides.
#[cfg(not(target_env = "msvc"))]
#[allow(non_upper_case_globals, unsafe_code)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 10] = b"narenas:1\0";

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Realtime message delivery over Server-Sent Events"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run dispatcher + connection node + embedded store in one process.
    Serve(config::ServeArgs),
    /// Cluster role: publish API, sequencing and durable writes (ScyllaDB), fabric (NATS).
    Dispatcher(cluster::RoleArgs),
    /// Cluster role: SSE connections, fan-out and replay (ScyllaDB, NATS).
    Node(cluster::RoleArgs),
    /// Create or update the ScyllaDB / Cassandra schema of a cluster.
    Migrate(cluster::MigrateArgs),
    /// Publish one message.
    Publish(cli::publish::Args),
    /// Follow channels and print their events as JSON lines (resumes on reconnect).
    Subscribe(cli::subscribe::Args),
    /// Mint a subscriber token (HS256) for local use.
    Token(cli::token::Args),
    /// Drain a node before it stops: SIGTERM, then follow its streams until it has exited.
    Drain(cli::drain::Args),
    /// Show a traced message's journey through the cluster: `herald trace CHANNEL SEQ`
    /// or `herald trace TRACE_ID`.
    Trace(cli::trace::Args),
    /// Load-test a server or a cluster: connections, deliveries, latency, memory and CPU per
    /// process role, CQL / NATS / Cassandra counters, and the store's own price.
    Bench(herald_bench::Args),
    /// Fault-injecting check of the guarantees: kills and restarts servers under load and
    /// verifies what clients saw (durability, order, gap-free resume, resets, exactly-once).
    Check(herald_check::Args),
    /// The floor for benchmarks: a minimal one-thread epoll SSE server (no store, Herald's
    /// wire bytes, the API subset `herald bench` uses) to measure Herald against.
    Floor {
        /// Address to listen on (port 0 picks one; printed as `herald floor listening on …`).
        #[arg(long, default_value = "127.0.0.1:7071")]
        listen: std::net::SocketAddr,
    },
    /// One process of `herald bench` holding connections (started by `bench`).
    #[command(hide = true)]
    BenchWorker {
        #[arg(long)]
        spec: String,
    },
}

fn main() -> anyhow::Result<()> {
    // Several TLS crypto providers are linked in (the database driver brings its own): name
    // the one every TLS link of this process uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Dispatcher(args) => cluster::run(cluster::Role::Dispatcher, args),
        Command::Node(args) => cluster::run(cluster::Role::Node, args),
        Command::Migrate(args) => cluster::migrate(args),
        Command::Publish(args) => cli::runtime()?.block_on(cli::publish::run(args)),
        Command::Subscribe(args) => cli::runtime()?.block_on(cli::subscribe::run(args)),
        Command::Token(args) => cli::token::run(args),
        Command::Drain(args) => cli::runtime()?.block_on(cli::drain::run(args)),
        Command::Trace(args) => cli::runtime()?.block_on(cli::trace::run(args)),
        Command::Bench(args) => {
            let report = cli::runtime_multi()?.block_on(herald_bench::run(args))?;
            report.print();
            Ok(())
        }
        Command::Check(args) => {
            let json = args.json;
            let report = cli::runtime_multi()?.block_on(herald_check::run(args))?;
            report.print(json);
            anyhow::ensure!(
                report.ok,
                "herald check: {} violation(s)",
                report.violation_count
            );
            Ok(())
        }
        Command::Floor { listen } => herald_bench::floor::run(listen),
        Command::BenchWorker { spec } => {
            let spec = serde_json::from_str(&spec)?;
            cli::runtime()?.block_on(herald_bench::worker::run(spec))
        }
    }
}
