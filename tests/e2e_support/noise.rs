//! Garbage for the bad-input tests, the same bytes on every run.

/// Deterministic pseudo-random bytes (xorshift).
pub fn noise(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
