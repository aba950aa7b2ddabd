//! What retention may trim: the journal side of the questions; when to
//! ask them is the caller's policy.

use rusqlite::OptionalExtension;

use super::log::unpack_numbered;
use super::Journal;
use crate::error::JournalError;

impl Journal {
    /// The lowest acknowledged position among every peer ever seen.
    pub fn min_acked(&self) -> Result<Option<u64>, JournalError> {
        self.run(|c| {
            let min = c.query_row("SELECT min(acked) FROM peer_acked", [], |r| {
                r.get::<_, Option<i64>>(0)
            })?;
            Ok(min.map(|a| a as u64))
        })
    }

    /// The sequence before the first entry stamped at or after `hlc` (for
    /// age-based retention): local stamps grow with the sequence, so the
    /// scan stops at the first young entry and costs what is to be
    /// trimmed. An old-stamped entry among young ones (a start-up
    /// comparison's row keeps its age) never lets younger ones go early.
    pub fn last_seq_before(&self, hlc: u64) -> Result<u64, JournalError> {
        self.run(|c| {
            // The first batch holding a young entry, then that entry in it.
            let first_young: Option<(i64, Vec<u8>)> = c
                .prepare_cached(
                    "SELECT first, body FROM log_batch WHERE hlc_max >= ?1 ORDER BY first LIMIT 1",
                )?
                .query_row([hlc as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            if let Some((first, blob)) = first_young {
                for change in unpack_numbered(first as u64, &blob) {
                    let (seq, stamp, _) = change?;
                    if stamp >= hlc {
                        return Ok(seq - 1);
                    }
                }
            }
            Self::last_seq_in(c)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::journal::tests::rec;
    use crate::journal::Journal;

    #[test]
    fn age_retention_stops_at_the_first_young_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.db")).unwrap();
        // Stamps 10, 20, then 5 (a start-up comparison's old row), 30.
        j.append_local(
            "n1",
            &[
                (10, rec("a", 1)),
                (20, rec("b", 1)),
                (5, rec("c", 1)),
                (30, rec("d", 1)),
            ],
        )
        .unwrap();
        assert_eq!(j.last_seq_before(15).unwrap(), 1);
        assert_eq!(j.last_seq_before(25).unwrap(), 3);
        assert_eq!(j.last_seq_before(100).unwrap(), 4);
        assert_eq!(j.last_seq_before(1).unwrap(), 0);
    }
}
