//! What this node knows of the others: their acknowledged positions,
//! the positions received from them, members (live and forgotten), and
//! the meta values.

use rusqlite::{params, OptionalExtension};

use super::Journal;
use crate::error::JournalError;

impl Journal {
    pub fn acked(&self, peer: &str) -> Result<u64, JournalError> {
        self.run(|c| {
            let acked = c
                .query_row(
                    "SELECT acked FROM peer_acked WHERE node_id = ?1",
                    [peer],
                    |r| r.get::<_, i64>(0),
                )
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
        self.run(|c| {
            c.execute(
                "INSERT INTO peer_acked (node_id, acked) VALUES (?1, ?2)
                 ON CONFLICT(node_id) DO UPDATE SET acked = max(acked, excluded.acked)",
                params![peer, upto as i64],
            )?;
            Ok(())
        })
    }

    /// Highest sequence of `origin` this node holds.
    pub fn received_upto(&self, origin: &str) -> Result<u64, JournalError> {
        self.run(|c| {
            let seq = c
                .query_row(
                    "SELECT seq FROM received WHERE origin = ?1",
                    [origin],
                    |r| r.get::<_, i64>(0),
                )
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
        self.run(|c| {
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

    pub fn set_meta(&mut self, k: &str, v: i64) -> Result<(), JournalError> {
        self.run(|c| {
            c.execute(
                "INSERT INTO meta (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                params![k, v],
            )?;
            Ok(())
        })
    }
}
