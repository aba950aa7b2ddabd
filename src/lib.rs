//! sersync: keeps SER's user and alias locations identical on every node.
//!
//! Pipeline (one sersync process per node, forked by the SER module):
//! worker queue ([`queue`]) → ingest → [`journal`] → [`net`] peers;
//! received records → [`journal`] inbox → [`apply`] → SER's RPC door or DB.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod abi;
pub mod apply;
pub mod codec;
pub mod config;
pub mod engine;
pub mod error;
pub mod ffi;
pub mod handoff;
pub mod hlc;
pub mod ingest;
pub mod journal;
pub mod log;
pub mod net;
pub mod os;
pub mod queue;
pub mod record;
pub mod restore;
pub mod scan;
pub mod seed;
pub mod status;
pub mod wire;
