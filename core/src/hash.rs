//! The series-key hash: word-at-a-time multiply/rotate, then a final avalanche so that the
//! low bits (the index slot) and the high bits (the slot tag) are both well mixed.

const K: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline]
fn mix(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(K).rotate_left(29)
}

#[inline]
fn finish(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Hashes a series header word and its key bytes.
#[inline]
pub fn hash_key(header: u64, key: &[u8]) -> u64 {
    let mut h = mix(0x5ca1_ab1e, header);
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        h = mix(h, u64::from_le_bytes(b));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        h = mix(h, u64::from_le_bytes(b));
    }
    finish(h ^ key.len() as u64)
}

/// [`hash_key`] of a key given zero-padded to whole words (`padded.len()` a multiple of 8,
/// `len` the key's own length): the same value, without the partial last word.
#[inline]
pub fn hash_padded(header: u64, padded: &[u8], len: usize) -> u64 {
    let mut h = mix(0x5ca1_ab1e, header);
    for c in padded.chunks_exact(8) {
        h = mix(h, u64::from_le_bytes(c.try_into().unwrap_or_default()));
    }
    finish(h ^ len as u64)
}

/// A 32-bit name hash for declared families (the family id in their series headers).
pub fn family_id(name: &str) -> u32 {
    // The top bit marks declared families so they can never collide with built-in ids.
    (finish(hash_key(0, name.as_bytes())) as u32) | 0x8000_0000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_keys_hash_apart() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000u32 {
            assert!(seen.insert(hash_key(1, format!("ns-{i}").as_bytes())));
        }
        // Same bytes, different header: different hash.
        assert_ne!(hash_key(1, b"abc"), hash_key(2, b"abc"));
        // Trailing zero bytes must not collide with the shorter key.
        assert_ne!(hash_key(1, b"ab"), hash_key(1, b"ab\0"));
    }

    #[test]
    fn low_bits_spread() {
        let mut buckets = [0u32; 64];
        for i in 0..64_000u32 {
            buckets[(hash_key(7, &i.to_le_bytes()) & 63) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (700..1300).contains(&b)),
            "{buckets:?}"
        );
    }

    #[test]
    fn padded_hash_is_the_key_hash() {
        for len in 0..40usize {
            let key: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37) | 1).collect();
            let mut padded = key.clone();
            padded.resize(len.div_ceil(8) * 8, 0);
            assert_eq!(hash_padded(9, &padded, len), hash_key(9, &key), "len {len}");
        }
    }

    #[test]
    fn family_ids_are_marked() {
        assert!(family_id("model_accuracy_percent") & 0x8000_0000 != 0);
        assert_ne!(family_id("a"), family_id("b"));
    }
}
