//! A stable 64-bit hash (FNV-1a followed by a splitmix64 finalizer): the
//! same on every process, platform and Rust version — unlike `std`'s
//! hasher — so every replica assigns checks alike and every proxy maps a
//! client address alike.

/// Hashes the parts in order; each part is terminated so `["ab","c"]` and
/// `["a","bc"]` differ.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(std::iter::once(&0xff)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}
