//! The log callback: SER registers its LM_* logger here.

use std::os::raw::c_int;

use super::boundary;
use crate::abi::{sersync_log_fn, sersync_rc};
use crate::log;

#[no_mangle]
pub extern "C" fn sersync_set_logger(f: sersync_log_fn) -> c_int {
    boundary(|| {
        log::set_logger(f);
        sersync_rc::SERSYNC_OK
    })
}
