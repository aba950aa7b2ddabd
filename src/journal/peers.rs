//! What this node knows of the others: their acknowledged positions,
//! the positions received from them, members (live and forgotten), and
//! the meta values.

use rusqlite::{params, OptionalExtension};

use super::Journal;
use crate::error::JournalError;

/// meta's row for the clock's high-water mark.
const CLOCK_HIGH: &str = "clock_high";

impl Journal {
    pub fn acked(&self, peer: &str) -> Result<u64, JournalError> {
        self.run(|c| {
            let acked = c
                .prepare_cached("SELECT acked FROM peer_acked WHERE node_id = ?1")?
                .query_row([peer], |r| r.get::<_, i64>(0))
                .optional()?;
            Ok(acked.unwrap_or(0) as u64)
        })
    }

    /// Whether this journal ever recorded a position of `peer` (from a
    /// welcome or an acknowledgement).
    pub fn has_acked(&self, peer: &str) -> Result<bool, JournalError> {
        self.run(|c| {
            let row = c
                .query_row(
                    "SELECT 1 FROM peer_acked WHERE node_id = ?1",
                    [peer],
                    |_| Ok(()),
                )
                .optional()?;
            Ok(row.is_some())
        })
    }

    /// Records that `peer` holds every local change up to `upto`.
    pub fn set_acked(&mut self, peer: &str, upto: u64) -> Result<(), JournalError> {
        self.run_write(|c| {
            c.prepare_cached(
                "INSERT INTO peer_acked (node_id, acked) VALUES (?1, ?2)
                 ON CONFLICT(node_id) DO UPDATE SET acked = max(acked, excluded.acked)",
            )?
            .execute(params![peer, upto as i64])?;
            Ok(())
        })
    }

    /// This journal turned out older than this node's last run (restored
    /// from a backup): the run it does not know numbered its changes from
    /// the same sequences as this one, and peers hold those numbers. So,
    /// in one transaction: every acknowledged position is forgotten (the
    /// next each peer reports is not trusted: this journal's entries are
    /// numbered after it, see [`Journal::renumber_after`]); and every
    /// member, every origin this node received from and `peer` is asked
    /// for a snapshot of its state (a `snapshot_in` row from nothing, which
    /// the welcome reports), since peers' states hold what this journal
    /// lost, this node's own changes included. Returns how many were asked.
    pub fn disown_positions(&mut self, me: &str, peer: &str) -> Result<usize, JournalError> {
        self.write(|tx| {
            tx.execute("DELETE FROM peer_acked", [])?;
            Ok(tx.execute(
                "INSERT INTO snapshot_in (origin, upto, after_key)
                 SELECT node_id, 0, x'' FROM (
                     SELECT node_id FROM members WHERE forgotten = 0
                     UNION SELECT origin FROM received
                     UNION SELECT ?2)
                 WHERE node_id != ?1
                   AND node_id NOT IN (SELECT node_id FROM members WHERE forgotten = 1)
                 ON CONFLICT(origin) DO UPDATE SET upto = 0, after_key = x''",
                params![me, peer],
            )?)
        })
    }

    /// Highest sequence of `origin` this node holds.
    pub fn received_upto(&self, origin: &str) -> Result<u64, JournalError> {
        self.run(|c| {
            let seq = c
                .prepare_cached(super::inbox::RECEIVED_SEQ)?
                .query_row([origin], |r| r.get::<_, i64>(0))
                .optional()?;
            Ok(seq.unwrap_or(0) as u64)
        })
    }

    /// Every member ever learned: (node id, address, forgotten).
    pub fn members(&self) -> Result<Vec<(String, String, bool)>, JournalError> {
        self.run(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT node_id, address, forgotten FROM members ORDER BY node_id",
            )?;
            let rows =
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? != 0)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Records a live member at `address` (not one that was forgotten).
    pub fn save_member(&mut self, node_id: &str, address: &str) -> Result<(), JournalError> {
        self.run_write(|c| {
            c.execute(
                "INSERT INTO members (node_id, address) VALUES (?1, ?2)
                 ON CONFLICT(node_id) DO UPDATE SET address = excluded.address WHERE forgotten = 0",
                params![node_id, address],
            )?;
            Ok(())
        })
    }

    /// Removes a member for good: it no longer holds back trimming, no
    /// snapshot or position is kept for it, and gossip cannot bring it back.
    pub fn forget_member(&mut self, node_id: &str) -> Result<(), JournalError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO members (node_id, address, forgotten) VALUES (?1, '', 1)
                 ON CONFLICT(node_id) DO UPDATE SET forgotten = 1",
                [node_id],
            )?;
            for table in ["peer_acked", "snapshot_in"] {
                let col = if table == "peer_acked" {
                    "node_id"
                } else {
                    "origin"
                };
                tx.execute(&format!("DELETE FROM {table} WHERE {col} = ?1"), [node_id])?;
            }
            Ok(())
        })
    }

    pub fn is_forgotten(&self, node_id: &str) -> Result<bool, JournalError> {
        self.run(|c| {
            let forgotten = c
                .query_row(
                    "SELECT forgotten FROM members WHERE node_id = ?1",
                    [node_id],
                    |r| r.get::<_, i64>(0),
                )
                .optional()?;
            Ok(forgotten == Some(1))
        })
    }

    pub fn meta(&self, k: &str) -> Result<Option<i64>, JournalError> {
        self.run(|c| {
            Ok(
                c.query_row("SELECT v FROM meta WHERE k = ?1", [k], |r| r.get(0))
                    .optional()?,
            )
        })
    }

    /// The node clock's high-water mark: no stamp this node issued or
    /// accepted (and kept) is above it, give or take the last second
    /// before a crash, whose stamps are in the state. Kept beside the
    /// incarnation; 0 when never saved.
    pub fn clock_high(&self) -> Result<u64, JournalError> {
        Ok(self.meta(CLOCK_HIGH)?.unwrap_or(0).max(0) as u64)
    }

    /// Raises the high-water mark to `stamp` (never lowers it; a stamp of
    /// 2^63 or more, which no peer's batch can carry, is not kept).
    pub fn raise_clock_high(&mut self, stamp: u64) -> Result<(), JournalError> {
        let Ok(v) = i64::try_from(stamp) else {
            return Ok(());
        };
        self.run_write(|c| {
            c.execute(
                "INSERT INTO meta (k, v) VALUES (?1, ?2)
                 ON CONFLICT(k) DO UPDATE SET v = max(v, excluded.v)",
                params![CLOCK_HIGH, v],
            )?;
            Ok(())
        })
    }

    pub fn set_meta(&mut self, k: &str, v: i64) -> Result<(), JournalError> {
        self.run_write(|c| {
            c.execute(
                "INSERT INTO meta (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                params![k, v],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::journal::tests::rec;
    use crate::journal::Journal;
    use crate::record::Change;

    #[test]
    fn a_restored_journal_disowns_positions_and_asks_every_peer_for_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.db")).unwrap();
        j.save_member("b", "tcp:127.0.0.1:1").unwrap();
        j.save_member("c", "tcp:127.0.0.1:2").unwrap();
        j.forget_member("d").unwrap();
        let from_e = [Change {
            seq: 4,
            hlc: 9,
            record: rec("x", 1),
        }];
        j.stage_remote("e", &from_e).unwrap();
        j.stage_remote("d", &from_e).unwrap();
        j.set_acked("b", 7).unwrap();
        j.set_acked("c", 3).unwrap();
        assert_eq!(j.disown_positions("a", "f").unwrap(), 4);
        for peer in ["b", "c"] {
            assert!(!j.has_acked(peer).unwrap(), "{peer}'s position is disowned");
        }
        for peer in ["b", "c", "e", "f"] {
            assert_eq!(j.snapshot_progress(peer).unwrap(), Some((0, Vec::new())));
        }
        for not_asked in ["a", "d"] {
            assert_eq!(j.snapshot_progress(not_asked).unwrap(), None);
        }
        // What was received stays: the snapshot adds to it.
        assert_eq!(j.received_upto("e").unwrap(), 4);
        // A snapshot in progress starts again from nothing.
        j.stage_snapshot(
            "b",
            20,
            &[crate::record::SnapRow {
                origin: "b".into(),
                hlc: 10,
                record: rec("y", 1),
            }],
            false,
        )
        .unwrap();
        j.disown_positions("a", "f").unwrap();
        assert_eq!(j.snapshot_progress("b").unwrap(), Some((0, Vec::new())));
    }
}
