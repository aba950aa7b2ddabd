//! Errors per subsystem. Their one mapping onto the C return codes is in
//! the C boundary (`ffi/error.rs`).

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("modparam \"{param}\": {reason}")]
    Invalid { param: &'static str, reason: String },
}

impl ConfigError {
    pub fn invalid(param: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            param,
            reason: reason.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("journal {path} is corrupt ({detail}); it was moved aside to {moved_to} (kept for inspection): restart SER to replicate again from a new, empty journal (peers resend what this node lacks)")]
    CorruptMovedAside {
        path: String,
        detail: String,
        moved_to: String,
    },
    #[error("journal {path} has schema version {found}, newer than this sersync understands ({supported}); upgrade sersync or move the file aside")]
    TooNew {
        path: String,
        found: i64,
        supported: i64,
    },
    #[error("journal {path}: stored record {seq} does not decode: {detail}")]
    BadRecord {
        path: String,
        seq: i64,
        detail: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("RPC door {path}: {detail}")]
    Door { path: String, detail: String },
    /// Nothing serves the door (no file, no reader): SER is not running
    /// it. Only then does the database path take over.
    #[error("RPC door {path}: {detail}")]
    DoorAbsent { path: String, detail: String },
    #[error("SER answered sersync.apply with an error: {0}")]
    Rejected(String),
    /// SER is starting (usrloc still loading its tables): retried, and
    /// not worth an error line.
    #[error("SER is not ready for sersync.apply yet: {0}")]
    NotReady(String),
    #[error("database {url}: {detail}")]
    Database { url: String, detail: String },
    #[error("malformed apply payload: {0}")]
    Decode(String),
    /// The records before `index` were applied; the one at `index` was
    /// not. `refused`: it never can be here as it is (a usrloc table this
    /// node lacks, an invalid field, too large for the door), else the
    /// failure may pass. The applier quarantines it after its tries.
    #[error("record {index} of the batch: {reason}")]
    Record {
        index: usize,
        refused: bool,
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue full")]
    Full,
    #[error("record of {len} bytes does not fit a queue slot ({max} bytes)")]
    TooLarge { len: usize, max: usize },
    #[error("cannot map shared memory: {0}")]
    Map(std::io::Error),
}
