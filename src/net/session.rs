//! Bytes from a socket to frames: in clear (the challenge; peers of v3 or
//! older while `accept_clear_peers` is set), or through protocol v4's
//! encrypted session (see [`crate::wire::session`]): the acceptor tells
//! a dialer's opening from a clear hello, runs the Noise handshake, and
//! from then on every byte each way is a sealed chunk.

use mio::Token;

use super::conn::{Conn, Crypto, Phase, Side, Verdict};
use super::Net;
use crate::codec;
use crate::log;
use crate::wire::session::{self, MAX_HANDSHAKE_CHUNK, OPENING_LEN, SESSION_VERSION};
use crate::wire::{Frame, MAGIC};

impl Net {
    /// Takes `bytes` read from `t` and handles every frame they complete.
    pub(super) fn take_bytes(&mut self, t: Token, bytes: &[u8]) -> Verdict {
        let Some(c) = self.conns.get_mut(&t) else {
            return Verdict::Close(String::new());
        };
        match c.crypto {
            Crypto::Clear => c.reader.extend(bytes),
            _ => c.raw.extend(bytes),
        }
        let v = self.advance(t);
        if !matches!(v, Verdict::Continue) {
            let copy = copy_verdict(&v);
            self.close(t, v);
            return copy;
        }
        self.drain_frames(t)
    }

    /// Moves the connection's handshake on with what is buffered, and
    /// decrypts what a session holds into its frame reader.
    fn advance(&mut self, t: Token) -> Verdict {
        loop {
            let c = self.conns.get_mut(&t).expect("caller checked");
            match &mut c.crypto {
                Crypto::Clear => return Verdict::Continue,
                Crypto::Session(ts) => {
                    let reader = &mut c.reader;
                    return match session::open_all(ts, &mut c.raw, &mut self.scratch, |p| {
                        reader.extend(p)
                    }) {
                        Ok(()) => Verdict::Continue,
                        Err(e) => Verdict::Close(format!("session: {e}")),
                    };
                }
                Crypto::Undecided => {
                    let head = c.raw.peek();
                    if head.len() < 4 {
                        return Verdict::Continue;
                    }
                    if head[..4] != MAGIC {
                        // A hello in clear: a node of v3 or older.
                        if !self.cfg.accept_clear_peers {
                            return c.refuse(
                                format!(
                                    "protocol v{SESSION_VERSION} only: this node accepts \
                                     encrypted sessions only"
                                ),
                                "peer speaks protocol v3 or older (no encrypted sessions): \
                                 set accept_clear_peers during an upgrade"
                                    .into(),
                            );
                        }
                        let rest = head.to_vec();
                        c.raw = Default::default();
                        c.crypto = Crypto::Clear;
                        c.reader.extend(&rest);
                        return Verdict::Continue;
                    }
                    if head.len() < OPENING_LEN {
                        return Verdict::Continue;
                    }
                    let version = u16::from_be_bytes([head[4], head[5]]);
                    if version != SESSION_VERSION {
                        return Verdict::Close(format!(
                            "peer opened a session of protocol v{version}; \
                             this node speaks v{SESSION_VERSION}"
                        ));
                    }
                    let opening = head[..OPENING_LEN].to_vec();
                    c.raw.consume(OPENING_LEN);
                    let challenge = c.challenge.as_ref().expect("set when accepted");
                    c.crypto = Crypto::Opened(session::prologue(challenge, &opening));
                }
                Crypto::Opened(_) => return self.accept_session(t),
                Crypto::Handshake(_) => return self.complete_session(t),
            }
        }
    }

    /// Acceptor: the dialer's first handshake message, decrypted with
    /// the first secret it was made with; answered; then its hello.
    fn accept_session(&mut self, t: Token) -> Verdict {
        let c = self.conns.get_mut(&t).expect("caller checked");
        let Crypto::Opened(prologue) = &c.crypto else {
            unreachable!("caller matched")
        };
        let prologue = prologue.clone();
        let Some(msg) = c.raw.next_chunk().map(<[u8]>::to_vec) else {
            return if c.raw.buffered() > 2 + MAX_HANDSHAKE_CHUNK {
                Verdict::Close("handshake message too long".into())
            } else {
                Verdict::Continue
            };
        };
        if msg.len() > MAX_HANDSHAKE_CHUNK {
            return Verdict::Close("handshake message too long".into());
        }
        let mut payload = [0u8; MAX_HANDSHAKE_CHUNK];
        let mut found = None;
        for psk in &self.psks {
            let Ok(mut hs) = session::responder(psk, &prologue) else {
                continue;
            };
            if let Ok(n) = hs.read_message(&msg, &mut payload) {
                found = Some((hs, n));
                break;
            }
        }
        let Some((mut hs, n)) = found else {
            return Verdict::Refused(
                "peer failed authentication (encrypted session): different secret?".into(),
            );
        };
        if let Err(e) = session::write_handshake(&mut hs, &[], &mut c.out) {
            return Verdict::Close(format!("session: {e}"));
        }
        match hs.into_transport_mode() {
            Ok(ts) => c.crypto = Crypto::Session(Box::new(ts)),
            Err(e) => return Verdict::Close(format!("session: {e}")),
        }
        let Phase::AwaitHello { nonce_a } = c.phase else {
            return Verdict::Close("session opened out of turn".into());
        };
        match codec::decode::<Frame>(&payload[..n]) {
            Ok(Frame::Hello {
                magic,
                version,
                node_id,
                listen,
                nonce,
                tag,
            }) => {
                let v = self.on_hello(t, nonce_a, (magic, version), node_id, listen, nonce, tag);
                if !matches!(v, Verdict::Continue) {
                    return v;
                }
                self.advance(t)
            }
            _ => Verdict::Close("the session's first message holds no hello".into()),
        }
    }

    /// Dialer: the acceptor's answer completes the handshake; what
    /// follows is sealed.
    fn complete_session(&mut self, t: Token) -> Verdict {
        let c = self.conns.get_mut(&t).expect("caller checked");
        let Some(msg) = c.raw.next_chunk().map(<[u8]>::to_vec) else {
            return Verdict::Continue;
        };
        let Crypto::Handshake(hs) = std::mem::replace(&mut c.crypto, Crypto::Clear) else {
            unreachable!("caller matched")
        };
        let mut hs = hs;
        let mut payload = [0u8; MAX_HANDSHAKE_CHUNK];
        if hs.read_message(&msg, &mut payload).is_err() {
            return Verdict::Refused(
                "peer failed authentication (encrypted session): different secret?".into(),
            );
        }
        match hs.into_transport_mode() {
            Ok(ts) => c.crypto = Crypto::Session(Box::new(ts)),
            Err(e) => return Verdict::Close(format!("session: {e}")),
        }
        self.advance(t)
    }

    /// Dialer: opens a session answering `challenge`, its hello inside.
    pub(super) fn open_session(&mut self, t: Token, challenge: Frame, hello: &Frame) -> Verdict {
        let c = self.conns.get_mut(&t).expect("caller checked");
        let opening = session::opening();
        let prologue = session::prologue(&challenge, &opening);
        let mut hs = match session::initiator(&self.psks[0], &prologue) {
            Ok(hs) => hs,
            Err(e) => return Verdict::Close(format!("session: {e}")),
        };
        let mut payload = Vec::new();
        if let Err(e) = codec::encode_into(hello, &mut payload) {
            return Verdict::Close(format!("session: {e}"));
        }
        c.out.extend_from_slice(&opening);
        if let Err(e) = session::write_handshake(&mut hs, &payload, &mut c.out) {
            return Verdict::Close(format!("session: {e}"));
        }
        c.crypto = Crypto::Handshake(Box::new(hs));
        c.challenge = Some(challenge);
        let rest = c.reader.take_rest();
        c.raw.extend(&rest);
        Verdict::Continue
    }

    /// A dialed connection closing in the middle of a session handshake:
    /// another secret, if the challenge said the peer speaks sessions;
    /// else maybe a node of v3 or older (it cannot read our opening). With
    /// `accept_clear_peers` the next dial talks v3 in clear; without,
    /// the peer is refused, saying why.
    pub(super) fn session_refused(&mut self, c: &Conn, why: Verdict) -> Verdict {
        let Side::Dial { peer } = c.side else {
            return why;
        };
        let stated = match &c.challenge {
            Some(Frame::Challenge { version, .. }) => *version,
            _ => return why,
        };
        if !matches!(c.crypto, Crypto::Handshake(_)) {
            return why;
        }
        let reason = match &why {
            Verdict::Close(r) | Verdict::Refused(r) => r.clone(),
            Verdict::Continue => String::new(),
        };
        if stated >= SESSION_VERSION {
            // It speaks sessions and did not answer ours: it could not
            // decrypt our first message.
            return Verdict::Refused(format!(
                "peer failed authentication (encrypted session; {reason}): different secret?"
            ));
        }
        if self.cfg.accept_clear_peers {
            self.peers[peer].hello_version = SESSION_VERSION - 1;
            log::info(format_args!(
                "peer {} closed our encrypted session's handshake ({reason}): \
                 an older release? talking v{} in clear to it (accept_clear_peers)",
                self.peers[peer].text,
                SESSION_VERSION - 1
            ));
            Verdict::Close(format!("{reason}; dialing again in clear"))
        } else {
            Verdict::Refused(format!(
                "peer closed our encrypted session's handshake ({reason}): a release \
                 older than protocol v{SESSION_VERSION} (set accept_clear_peers during \
                 an upgrade), or another secret"
            ))
        }
    }
}

fn copy_verdict(v: &Verdict) -> Verdict {
    match v {
        Verdict::Close(s) => Verdict::Close(s.clone()),
        Verdict::Refused(s) => Verdict::Refused(s.clone()),
        Verdict::Continue => Verdict::Continue,
    }
}
