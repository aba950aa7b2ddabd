//! Dispatch: each frame that arrives goes to the handler of its stage
//! (handshake, outbound, inbound, snapshot, members), chosen by the
//! connection's side and phase; the handler's verdict says what happens to
//! the connection next.

use mio::Token;

use super::conn::{frame_name, Phase, Side, Verdict};
use super::Net;
use crate::log;
use crate::wire::version::refused_for_version;
use crate::wire::Frame;

impl Net {
    /// Handles every complete frame buffered on `t`.
    pub(super) fn drain_frames(&mut self, t: Token) -> Verdict {
        loop {
            let Some(c) = self.conns.get_mut(&t) else {
                return Verdict::Close(String::new());
            };
            let frame = match c.reader.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Verdict::Continue,
                Err(e) => {
                    let v = Verdict::Close(format!("protocol error: {e}"));
                    self.close(t, Verdict::Close(format!("protocol error: {e}")));
                    return v;
                }
            };
            match self.handle(t, frame) {
                Verdict::Continue => {}
                v => {
                    let copy = match &v {
                        Verdict::Close(s) => Verdict::Close(s.clone()),
                        Verdict::Refused(s) => Verdict::Refused(s.clone()),
                        Verdict::Continue => Verdict::Continue,
                    };
                    self.close(t, v);
                    return copy;
                }
            }
        }
    }

    /// Dispatches one frame to the handler of its stage; the handler says
    /// what happens to the connection next.
    fn handle(&mut self, t: Token, frame: Frame) -> Verdict {
        let c = self.conns.get(&t).expect("caller checked");
        match (&c.side, &c.phase, frame) {
            (
                Side::Dial { .. },
                Phase::AwaitChallenge,
                Frame::Challenge {
                    magic,
                    version,
                    node_id,
                    nonce,
                },
            ) => self.on_challenge(t, magic, version, node_id, nonce),
            (
                Side::Dial { peer },
                Phase::AwaitWelcome { nonce_a, nonce_d },
                Frame::Welcome {
                    tag,
                    resume_after,
                    snapshot,
                },
            ) => {
                let (peer, nonce_a, nonce_d) = (*peer, *nonce_a, *nonce_d);
                self.on_welcome(
                    t,
                    peer,
                    (nonce_a, nonce_d),
                    tag,
                    resume_after,
                    snapshot,
                    None,
                )
            }
            (
                Side::Dial { peer },
                Phase::AwaitWelcome { nonce_a, nonce_d },
                Frame::WelcomeV2 {
                    tag,
                    resume_after,
                    snapshot,
                    session,
                },
            ) => {
                let (peer, nonce_a, nonce_d) = (*peer, *nonce_a, *nonce_d);
                let session = Some(session);
                self.on_welcome(
                    t,
                    peer,
                    (nonce_a, nonce_d),
                    tag,
                    resume_after,
                    snapshot,
                    session,
                )
            }
            (Side::Dial { peer }, Phase::AwaitWelcome { .. }, Frame::Refuse { reason })
                if refused_for_version(&reason, c.hello_version).is_some() =>
            {
                // An older node: say hello again stating what it speaks.
                let v = refused_for_version(&reason, c.hello_version).expect("guarded");
                let peer = *peer;
                self.peers[peer].hello_version = v;
                log::info(format_args!(
                    "peer {} speaks protocol v{v} only: talking v{v} to it",
                    self.peers[peer].text
                ));
                Verdict::Close(format!(
                    "peer refused: {reason}; saying hello again with v{v}"
                ))
            }
            (Side::Dial { .. }, _, Frame::Refuse { reason }) => {
                Verdict::Refused(format!("peer refused: {reason}"))
            }
            // A dialer refuses a link it finds is to a clone (identity.rs).
            (Side::Accept, Phase::Streaming, Frame::Refuse { reason }) => {
                Verdict::Refused(format!("peer refused: {reason}"))
            }
            (Side::Dial { peer }, Phase::Streaming, Frame::Ack { upto }) => {
                let peer = *peer;
                self.on_ack(t, peer, upto)
            }
            (Side::Dial { peer }, Phase::Streaming, Frame::TempFail { upto, reason }) => {
                let peer = *peer;
                self.on_temp_fail(t, peer, upto, reason)
            }
            (
                Side::Accept,
                Phase::AwaitHello { nonce_a },
                Frame::Hello {
                    magic,
                    version,
                    node_id,
                    listen,
                    nonce,
                    tag,
                },
            ) => {
                let nonce_a = *nonce_a;
                self.on_hello(t, nonce_a, (magic, version), node_id, listen, nonce, tag)
            }
            (Side::Accept, Phase::Streaming, Frame::RawBatch { changes }) if c.version >= 2 => {
                let origin = c.remote_id.clone();
                self.receive_raw_batch(t, &origin, changes)
            }
            (Side::Accept, Phase::Streaming, Frame::Batch { changes }) => {
                let origin = c.remote_id.clone();
                self.receive_batch(t, &origin, changes)
            }
            (
                Side::Accept,
                Phase::Streaming,
                Frame::SnapshotChunk {
                    upto,
                    chunk,
                    rows,
                    last,
                },
            ) => self.on_snapshot_chunk(t, upto, chunk, rows, last),
            (Side::Dial { peer }, Phase::Streaming, Frame::SnapshotAck { .. })
                if c.snap.is_some() =>
            {
                let peer = *peer;
                self.on_snapshot_ack(t, peer)
            }
            (_, Phase::Streaming, Frame::Members { members }) => self.on_members(t, members),
            (Side::Accept, Phase::Streaming, Frame::DialerSession { session })
                if c.version >= 2 =>
            {
                self.on_dialer_session(t, session)
            }
            (Side::Accept, Phase::Streaming, Frame::CheckDigest { check, at, digest })
                if c.version >= 3 =>
            {
                self.on_check_digest(t, check, at, digest)
            }
            (
                Side::Dial { .. },
                Phase::Streaming,
                Frame::CheckVersions {
                    check,
                    differing,
                    ranges,
                    origins,
                    versions,
                },
            ) if c.version >= 3 => {
                self.on_check_versions(t, check, differing, ranges, origins, versions)
            }
            (_, Phase::Streaming, Frame::CheckRows { check, rows, want }) if c.version >= 3 => {
                self.on_check_rows(t, check, rows, want)
            }
            (_, _, f) => Verdict::Close(format!("unexpected {} frame", frame_name(&f))),
        }
    }
}
