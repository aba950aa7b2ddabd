//! The C contract: the generated view of include/sersync.h and the limits
//! it fixes. Ground floor: depends on nothing else in the crate.
#![allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code
)]
#![allow(clippy::all)]

include!(concat!(env!("OUT_DIR"), "/sersync_h.rs"));

/// Most cluster members one node tracks (the status area has this many slots).
pub const MAX_PEERS: usize = SERSYNC_MAX_PEERS as usize;
