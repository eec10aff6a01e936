//! Herald's servers: the embedded single process (`serve`), the cluster roles (`dispatcher`,
//! `node`, `migrate`) and everything they answer over HTTP, with their configuration and
//! authentication. The `herald` binary runs these; its load generator and checker live in
//! crates of their own, outside this code path.

#![forbid(unsafe_code)]

pub mod auth;
pub mod cluster;
pub mod config;
pub mod serve;
pub mod server;
