//! A minimal CQL (native protocol v4) client: enough to check that a Cassandra/ScyllaDB
//! answers and to drop a keyspace, synchronously (it also runs from `Drop` in tests), without
//! a driver. Used by the cluster target and by the cluster tests' harness.

use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn cql_frame(opcode: u8, stream: i16, body: &[u8]) -> Vec<u8> {
    let mut f = vec![0x04, 0x00];
    f.extend_from_slice(&stream.to_be_bytes());
    f.push(opcode);
    f.extend_from_slice(&(body.len() as i32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

fn cql_read(s: &mut TcpStream) -> anyhow::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head)?;
    let len = i32::from_be_bytes([head[5], head[6], head[7], head[8]]);
    anyhow::ensure!((0..=16 << 20).contains(&len), "bad CQL frame length {len}");
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body)?;
    Ok((head[4], body))
}

fn cql_error(body: &[u8]) -> String {
    if body.len() >= 6 {
        let n = u16::from_be_bytes([body[4], body[5]]) as usize;
        let msg = String::from_utf8_lossy(&body[6..(6 + n).min(body.len())]);
        return format!(
            "code {:#x}: {msg}",
            i32::from_be_bytes([body[0], body[1], body[2], body[3]])
        );
    }
    "malformed error".to_owned()
}

/// Runs one statement on the first contact point of `cql` (blocking).
pub fn cql_exec(cql: &str, statement: &str, timeout: Duration) -> anyhow::Result<()> {
    let first = cql.split(',').next().unwrap_or(cql).trim();
    let addr = std::net::ToSocketAddrs::to_socket_addrs(first)?
        .next()
        .context("no address for the CQL contact point")?;
    let started = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to CQL at {first}"))?;
    s.set_read_timeout(Some(timeout))?;
    let mut startup = Vec::new();
    startup.extend_from_slice(&1u16.to_be_bytes());
    for v in ["CQL_VERSION", "3.0.0"] {
        startup.extend_from_slice(&(v.len() as u16).to_be_bytes());
        startup.extend_from_slice(v.as_bytes());
    }
    s.write_all(&cql_frame(0x01, 1, &startup))?;
    let (op, body) = cql_read(&mut s)?;
    match op {
        0x02 => {}
        0x00 => bail!("CQL STARTUP failed: {}", cql_error(&body)),
        op => bail!("CQL STARTUP answered opcode {op:#x} (authentication is not supported)"),
    }
    let mut q = Vec::new();
    q.extend_from_slice(&(statement.len() as i32).to_be_bytes());
    q.extend_from_slice(statement.as_bytes());
    q.extend_from_slice(&0x0006u16.to_be_bytes()); // LOCAL_QUORUM
    q.push(0);
    s.write_all(&cql_frame(0x07, 2, &q))?;
    let (op, body) = cql_read(&mut s)?;
    match op {
        0x08 => Ok(()),
        0x00 => bail!("CQL `{statement}` failed: {}", cql_error(&body)),
        op => bail!(
            "CQL `{statement}` answered opcode {op:#x} after {:?}",
            started.elapsed()
        ),
    }
}
