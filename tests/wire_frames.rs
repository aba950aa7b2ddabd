//! Frames round-trip, and malformed input is refused before anything is
//! allocated for it.

use sersync::error::WireError;
use sersync::record::{Change, Contact, Op, Record};
use sersync::wire::{Frame, FrameReader, MAGIC, MAX_FRAME, VERSION};

fn batch() -> Frame {
    Frame::Batch {
        changes: (1..=3)
            .map(|i| Change {
                seq: i,
                hlc: 1 << 20 | i,
                record: Record::Contact {
                    op: if i == 3 { Op::Delete } else { Op::Upsert },
                    contact: Contact {
                        domain: b"location".to_vec(),
                        aor: format!("u{i}").into_bytes(),
                        contact: format!("sip:u{i}@h").into_bytes(),
                        user_agent: vec![0xc3, 0x28, 0xff],
                        q: -1,
                        expires: -5,
                        ..Default::default()
                    },
                },
            })
            .collect(),
    }
}

#[test]
fn every_frame_kind_round_trips_even_byte_by_byte() {
    let frames = vec![
        Frame::Challenge {
            magic: MAGIC,
            version: VERSION,
            node_id: "sip1".into(),
            nonce: [7; 32],
        },
        Frame::Hello {
            magic: MAGIC,
            version: VERSION,
            node_id: "sip2".into(),
            listen: "tcp:127.0.0.2:5999".into(),
            nonce: [8; 32],
            tag: [9; 32],
        },
        Frame::Members {
            members: vec![sersync::wire::Member {
                node_id: "sip3".into(),
                address: String::new(),
                forgotten: true,
            }],
        },
        Frame::Welcome {
            tag: [1; 32],
            resume_after: u64::MAX,
            snapshot: None,
        },
        Frame::SnapshotAck { chunk: 3 },
        Frame::Refuse {
            reason: "no".into(),
        },
        batch(),
        Frame::Ack { upto: 42 },
        Frame::TempFail {
            upto: 41,
            reason: "disk".into(),
        },
    ];
    let mut bytes = Vec::new();
    for f in &frames {
        f.write_to(&mut bytes).unwrap();
    }
    let mut r = FrameReader::new();
    let mut got = Vec::new();
    for b in &bytes {
        r.extend(std::slice::from_ref(b));
        while let Some(f) = r.next_frame().unwrap() {
            got.push(f);
        }
    }
    assert_eq!(got, frames);
    assert_eq!(r.buffered(), 0);
}

#[test]
fn oversize_length_prefix_is_refused_without_allocating() {
    let mut r = FrameReader::new();
    r.extend(&u32::MAX.to_be_bytes());
    match r.next_frame() {
        Err(WireError::TooLarge { len, max }) => {
            assert_eq!(len, u32::MAX as usize);
            assert_eq!(max, MAX_FRAME);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn truncated_frame_waits_and_garbage_body_is_an_error() {
    let mut bytes = Vec::new();
    batch().write_to(&mut bytes).unwrap();
    let mut r = FrameReader::new();
    r.extend(&bytes[..bytes.len() - 1]);
    assert!(
        r.next_frame().unwrap().is_none(),
        "incomplete frame is not decoded early"
    );

    // A well-framed body that is not a frame.
    let mut r = FrameReader::new();
    r.extend(&8u32.to_be_bytes());
    r.extend(&[0xff; 8]);
    assert!(matches!(r.next_frame(), Err(WireError::Malformed(_))));

    // A vector claiming 2^60 elements inside a small frame.
    let mut r = FrameReader::new();
    let body = [4u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f];
    r.extend(&(body.len() as u32).to_be_bytes());
    r.extend(&body);
    assert!(matches!(r.next_frame(), Err(WireError::Malformed(_))));

    // Trailing bytes inside a frame are refused, not ignored.
    let mut one = Vec::new();
    Frame::Ack { upto: 1 }.write_to(&mut one).unwrap();
    let len = u32::from_be_bytes(one[..4].try_into().unwrap()) + 1;
    let mut r = FrameReader::new();
    r.extend(&len.to_be_bytes());
    r.extend(&one[4..]);
    r.extend(&[0]);
    assert!(matches!(r.next_frame(), Err(WireError::Malformed(_))));
}

#[test]
fn random_bytes_never_panic() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..2000 {
        let mut r = FrameReader::new();
        let mut buf = Vec::new();
        let n = (seed % 300) as usize;
        for _ in 0..n {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            buf.push(seed as u8);
        }
        // Keep lengths small so most inputs reach the decoder.
        if buf.len() >= 4 {
            buf[0] = 0;
            buf[1] = 0;
        }
        r.extend(&buf);
        while let Ok(Some(_)) = r.next_frame() {}
    }
}
