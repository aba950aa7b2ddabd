//! The peer frame decoder on arbitrary bytes: it must return frames or an
//! error, never panic, and never allocate more than the input justifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sersync::wire::FrameReader;

fuzz_target!(|data: &[u8]| {
    // Whole, and in two pieces, as TCP may deliver it.
    let mut r = FrameReader::new();
    r.extend(data);
    while let Ok(Some(_)) = r.next_frame() {}
    let cut = data.first().map_or(0, |b| *b as usize).min(data.len());
    let mut r = FrameReader::new();
    r.extend(&data[..cut]);
    let _ = r.next_frame();
    r.extend(&data[cut..]);
    while let Ok(Some(_)) = r.next_frame() {}
});
