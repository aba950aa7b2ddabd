//! What retention may trim: the journal side of the questions; when to
//! ask them is the caller's policy.

use rusqlite::OptionalExtension;

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
            let first_young: Option<i64> = c
                .query_row(
                    "SELECT seq FROM log WHERE hlc >= ?1 ORDER BY seq LIMIT 1",
                    [hlc as i64],
                    |r| r.get(0),
                )
                .optional()?;
            match first_young {
                Some(seq) => Ok(seq as u64 - 1),
                None => {
                    let last = c.query_row("SELECT coalesce(max(seq), 0) FROM log", [], |r| {
                        r.get::<_, i64>(0)
                    })?;
                    Ok(last as u64)
                }
            }
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
