//! The one mapping from Rust errors onto the C return codes (`sersync_rc`,
//! numbers fixed by sersync.h). Each subsystem's error enum that reaches
//! the boundary maps here; the exports' own argument checks (NULL, a
//! malformed node id or apply payload, a timeout, a callback's failure,
//! a caught panic) return their code directly.

use crate::abi::sersync_rc;
use crate::error::{ConfigError, JournalError, QueueError};

impl From<&QueueError> for sersync_rc {
    fn from(e: &QueueError) -> Self {
        match e {
            QueueError::Full => sersync_rc::SERSYNC_E_QUEUE_FULL,
            QueueError::TooLarge { .. } => sersync_rc::SERSYNC_E_TOO_LARGE,
            QueueError::Map(_) => sersync_rc::SERSYNC_E_IO,
        }
    }
}

/// Every configuration error: the text says which modparam and why.
impl From<&ConfigError> for sersync_rc {
    fn from(_: &ConfigError) -> Self {
        sersync_rc::SERSYNC_E_CONFIG
    }
}

/// Every journal error: the text says which file and why.
impl From<&JournalError> for sersync_rc {
    fn from(_: &JournalError) -> Self {
        sersync_rc::SERSYNC_E_JOURNAL
    }
}
