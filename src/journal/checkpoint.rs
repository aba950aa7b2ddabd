//! WAL checkpoints on a thread of their own. SQLite's autocheckpoint runs
//! inside whichever commit leaves the WAL 1,000 frames long: that thread
//! (ingest, network, applier) then copies the WAL into the database file
//! and fsyncs it before it goes on (5–20 ms). A connection handed to the
//! [`Checkpointer`] wakes it after each commit instead; the checkpointer
//! copies alongside the writers, and holds them at the write gate only
//! when the WAL has grown long (each checkpoint overtaken by new commits,
//! the WAL never starting again).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender};

use super::Journal;
use crate::error::JournalError;
use crate::log::{self, RateLimit};

/// WAL frames (pages) after which a checkpoint is due: SQLite's default.
const CHECKPOINT_FRAMES: u32 = 1000;
/// A WAL this long is checkpointed with this process's writers held, so
/// that it is copied whole and the next commit starts it again (16 MiB).
const RESTART_FRAMES: u32 = 4000;
/// A connection handed over still checkpoints itself (SQLite's
/// autocheckpoint) when its commit leaves the WAL this long: the
/// checkpointer is stuck or gone (80 MiB).
const BACKSTOP_FRAMES: u32 = 20_000;

/// A checkpoint that fails (a full disk) is tried again at the next
/// commit; said once a second.
static CHECKPOINT_ERR: RateLimit = RateLimit::new(1000);

/// The checkpoint thread's side. Runs until every connection handed to it
/// is closed (their senders gone) or `stop` is set.
pub struct Checkpointer {
    journal: Journal,
    wal_index: Option<File>,
    commits: Receiver<()>,
    commit: Sender<()>,
}

/// The WAL's length in frames, from the header of its index (the `-shm`
/// file, https://sqlite.org/walformat.html: version 3007000 at offset 0,
/// "initialised" at 12, mxFrame at 16, in native byte order). Read
/// outside SQLite's locks: a torn read only moves one checkpoint.
fn wal_frames(index: &File) -> Option<u32> {
    let mut hdr = [0u8; 48];
    index.read_exact_at(&mut hdr, 0).ok()?;
    let word = |at: usize| u32::from_ne_bytes(hdr[at..at + 4].try_into().expect("4 bytes"));
    (word(0) == 3_007_000 && hdr[12] == 1).then(|| word(16))
}

impl Checkpointer {
    /// A checkpointer working on `journal`'s file through that connection.
    pub fn new(journal: Journal) -> Checkpointer {
        let (commit, commits) = crossbeam_channel::bounded(1);
        let shm = format!("{}-shm", journal.path().display());
        Checkpointer {
            wal_index: File::open(Path::new(&shm)).ok(),
            journal,
            commits,
            commit,
        }
    }

    /// From now on `journal` (a connection to the same file) leaves its
    /// checkpoints to this checkpointer.
    pub fn hand_over(&self, journal: &mut Journal) -> Result<(), JournalError> {
        if self.wal_index.is_none() {
            return Ok(()); // run() cannot take them
        }
        journal.run(|c| Ok(c.pragma_update(None, "wal_autocheckpoint", BACKSTOP_FRAMES)?))?;
        journal.after_commit = Some(self.commit.clone());
        Ok(())
    }

    pub fn run(self, stop: &AtomicBool) {
        let Checkpointer {
            journal,
            wal_index,
            commits,
            commit,
        } = self;
        drop(commit);
        let Some(index) = wal_index else {
            log::error(format_args!(
                "cannot read the journal's WAL index: checkpoints left to the writers"
            ));
            return;
        };
        // Frames of the current WAL already copied.
        let mut copied = 0;
        while commits.recv().is_ok() && !stop.load(Ordering::Acquire) {
            let Some(frames) = wal_frames(&index) else {
                continue;
            };
            if frames < copied {
                copied = 0; // the WAL started again
            }
            if frames - copied < CHECKPOINT_FRAMES {
                continue;
            }
            match journal.checkpoint(frames >= RESTART_FRAMES) {
                Ok(done) => copied = done,
                Err(e) => {
                    if let Some(n) = CHECKPOINT_ERR.allow() {
                        log::error(format_args!(
                            "checkpoint of the journal: {e} ({n} similar suppressed)"
                        ));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::Checkpointer;
    use crate::journal::tests::rec;
    use crate::journal::Journal;

    /// Commits handed over to the checkpointer reach the database file
    /// while they go on: nothing else would copy them (fewer frames than
    /// the backstop), and every change is in the journal.
    #[test]
    fn the_checkpointer_copies_the_wal_while_writers_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let mut j = Journal::open(&path).unwrap();
        let ckpt = Checkpointer::new(Journal::open(&path).unwrap());
        ckpt.hand_over(&mut j).unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| ckpt.run(&stop));
            // About 10 frames a batch: some 6,000 frames, 24 MiB of WAL.
            let body = "x".repeat(300);
            for b in 0..600u64 {
                let batch: Vec<_> = (0..10)
                    .map(|i| (b * 10 + i, rec(&format!("{body}{b}-{i}"), 1)))
                    .collect();
                j.append_local("n1", &batch).unwrap();
            }
            let db = std::fs::metadata(&path).unwrap().len();
            assert!(db > 4 << 20, "database file of {db} bytes");
            drop(j); // the checkpointer ends with its last connection
        });
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.log_len().unwrap(), 6_000);
    }
}
