//! The Quire server (`quire`): hosted repositories, the push-to-run queue,
//! the runner that launches `quire-ci` executors, ingest of its events into SQLite, the
//! HTTP API and web UI, and the operator CLI. The binary in `main.rs` only
//! parses the command line and calls into these modules; ARCHITECTURE.md
//! has the map.

pub mod api;
pub mod caches;
pub mod config;
pub mod db;
pub mod executor_api;
pub mod executors;
pub mod hook;
pub mod http;
pub mod ingest;
pub mod job_rows;
pub mod launch;
pub mod launcher;
pub mod live;
pub mod ops;
pub mod protocol;
pub mod repos;
pub mod retention;
pub mod root;
pub mod run_output;
pub mod runs;
pub mod schedule;
pub mod scheduler;
pub mod serve;
pub mod socket;
pub mod spool;
pub mod telemetry;
pub mod token;
pub mod web;
