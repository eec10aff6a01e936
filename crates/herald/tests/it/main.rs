//! Integration tests: the real `herald` binary on 127.0.0.1:0, driven over real sockets by
//! real clients (herald-client, reqwest, raw TCP, and the `eventsource-client` crate).

mod acks;
mod admission;
mod bad_input;
mod bench;
mod check;
mod cluster;
mod cluster_bench;
mod cluster_otlp;
mod cluster_presence;
mod cluster_support;
mod cluster_trace;
mod common;
mod crash;
mod drain;
mod jaeger;
mod lifecycle;
mod locked;
mod otlp;
mod presence;
mod publish;
mod security;
mod slow;
mod sse;
mod tls;
mod trace;
