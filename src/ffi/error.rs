//! The one mapping from Rust errors onto the C return codes (`sersync_rc`).

use crate::abi::sersync_rc;
use crate::error::QueueError;

impl From<&QueueError> for sersync_rc {
    fn from(e: &QueueError) -> Self {
        match e {
            QueueError::Full => sersync_rc::SERSYNC_E_QUEUE_FULL,
            QueueError::TooLarge { .. } => sersync_rc::SERSYNC_E_TOO_LARGE,
            QueueError::Map(_) => sersync_rc::SERSYNC_E_IO,
        }
    }
}
