//! End-to-end harness: real Kamailio nodes with sersync on loopback, driven
//! by sipp, inspected through Kamailio's JSON-RPC FIFO.
//!
//! Integration tests include it with
//! `#[path = "e2e_support/mod.rs"] mod support;`.
//!
//! Every process started here is stopped by its PID (Kamailio by its own
//! process group, which it leads), also when a test fails: `Node` and
//! `SippKeep` stop theirs on drop. Nothing is sent beyond 127.0.0.x.
//!
//! By subject: `processes` (waiting, process groups, the machine lock),
//! `config` (paths, module, kamailio.cfg, SER's database), `cluster`,
//! `node`, `rpc` (the FIFO, HTTP and kamcmd doors), `contacts` (ul.dump,
//! comparison, convergence), `db_servers` (MariaDB and PostgreSQL
//! servers for SER's database), `status` (sersync.status and .peers), `sipp`
//! (registrations), `sipp_calls` and `noise` (garbage bytes), `ser_root`
//! (nodes on a Debian root's Kamailio, e.g. 6.0). Everything
//! public is re-exported here.
//!
//! The nodes need `build/sersync.so` (`make`). `SERSYNC_E2E_NO_MODULE=1`
//! starts them without it, to work on the harness alone; replication
//! assertions then fail, as they should.
#![allow(dead_code)]

mod cluster;
mod config;
mod contacts;
mod db_servers;
mod node;
mod noise;
mod processes;
mod rpc;
mod ser_root;
mod sipp;
mod sipp_calls;
mod status;

#[allow(unused_imports)] // each test binary and bench uses a part
pub use {
    cluster::*, config::*, contacts::*, db_servers::*, node::*, noise::*, processes::*, rpc::*,
    ser_root::*, sipp::*, sipp_calls::*, status::*,
};
