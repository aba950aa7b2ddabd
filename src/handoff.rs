//! The named hand-off from the ingest stage to the network thread.
//!
//! Ingest journals local changes; the network thread sends them. What
//! passes between them is the journal's tail (the last sequence committed,
//! which only grows) and the few requests that arrive through the worker
//! queue (`sersync.forget`, `sersync.resync`), each followed by a wake-up of the network
//! thread's poll. The status struct only reports; it carries no signal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use mio::Waker;

/// The last sequence of the local journal known to be committed.
#[derive(Debug, Default)]
pub struct Tail(AtomicU64);

impl Tail {
    pub fn new(last: u64) -> Tail {
        Tail(AtomicU64::new(last))
    }

    /// Entries up to `last` are committed. Never moves backwards: an
    /// append and a renumbering of the journal may report out of order.
    pub fn advance(&self, last: u64) {
        self.0.fetch_max(last, Ordering::AcqRel);
    }

    pub fn last(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// Requests for the network thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetCmd {
    /// `sersync.forget`: remove a member for good.
    Forget(String),
    /// `sersync.resync`: compare with this peer (empty: every peer) now.
    Resync(String),
}

/// The network thread's half: what ingest committed and asked for.
pub struct FromIngest {
    pub tail: Arc<Tail>,
    pub cmds: Receiver<NetCmd>,
}

/// The ingest stage's half. The waker is the network thread's poll's.
pub struct ToNet {
    tail: Arc<Tail>,
    cmds: Sender<NetCmd>,
    waker: Arc<Waker>,
}

/// A hand-off starting at the journal's current `last` sequence; the
/// sending half is completed with the network thread's waker by
/// [`Pending::connect`].
pub fn handoff(last: u64) -> (Pending, FromIngest) {
    let tail = Arc::new(Tail::new(last));
    let (tx, rx) = crossbeam_channel::unbounded();
    (
        Pending {
            tail: tail.clone(),
            cmds: tx,
        },
        FromIngest { tail, cmds: rx },
    )
}

/// The ingest half before the network thread's poll exists.
pub struct Pending {
    tail: Arc<Tail>,
    cmds: Sender<NetCmd>,
}

impl Pending {
    /// The tail, for entries journaled before the ingest runs (the
    /// start-up comparison's).
    pub fn tail(&self) -> Arc<Tail> {
        self.tail.clone()
    }

    pub fn connect(self, waker: Arc<Waker>) -> ToNet {
        ToNet {
            tail: self.tail,
            cmds: self.cmds,
            waker,
        }
    }
}

impl ToNet {
    /// Journal entries up to `last` are committed: the network thread
    /// may send them.
    pub fn committed(&self, last: u64) {
        self.tail.advance(last);
        let _ = self.waker.wake();
    }

    pub fn send(&self, cmd: NetCmd) {
        // The receiver lives as long as the network thread; after it
        // stopped, nothing is left to act on the request.
        let _ = self.cmds.send(cmd);
        let _ = self.waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_never_moves_backwards() {
        let t = Tail::new(10);
        t.advance(7);
        assert_eq!(t.last(), 10);
        t.advance(12);
        assert_eq!(t.last(), 12);
    }
}
