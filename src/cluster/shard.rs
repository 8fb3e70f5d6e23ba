//! Which scheduling shard a provider belongs to: a stable hash of its tenant and provider
//! ids over the fleet's shard count, the same on every replica and every version.

use sha2::{Digest, Sha256};

use crate::domain::ProviderKey;

/// The fleet's shards: `0..count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardMap {
    count: u32,
}

impl ShardMap {
    /// A map over `count` shards (at least one).
    pub fn new(count: u32) -> Self {
        Self {
            count: count.max(1),
        }
    }

    /// How many shards there are.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The shard of `key`: the first 8 bytes of SHA-256 over `tenant/provider`, read as a
    /// big-endian integer, modulo the count.
    pub fn shard_of(&self, key: &ProviderKey) -> u32 {
        let digest = Sha256::new()
            .chain_update(key.tenant().as_str())
            .chain_update("/")
            .chain_update(key.provider().as_str())
            .finalize();
        let mut prefix = [0; 8];
        prefix.copy_from_slice(&digest[..8]);
        let shard = u64::from_be_bytes(prefix) % u64::from(self.count);
        u32::try_from(shard).unwrap_or_default()
    }
}

/// Shard numbers as ranges, for people: `0-3, 7, 9-10` (`none` when empty). The numbers
/// must be sorted.
pub fn shard_ranges(shards: &[u32]) -> String {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for &shard in shards {
        match ranges.last_mut() {
            Some((_, end)) if shard == *end + 1 => *end = shard,
            _ => ranges.push((shard, shard)),
        }
    }
    if ranges.is_empty() {
        return "none".to_owned();
    }
    let ranges = ranges.iter().map(|&(start, end)| match start == end {
        true => start.to_string(),
        false => format!("{start}-{end}"),
    });
    ranges.collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str, provider: &str) -> ProviderKey {
        ProviderKey::parse(tenant, provider).unwrap()
    }

    #[test]
    fn the_hash_is_the_documented_one_and_spreads_providers_evenly() {
        // Computed apart (Python's hashlib) for 64 shards, the count a new fleet gets: the
        // README's formula, fixed across versions.
        let map = ShardMap::new(64);
        assert_eq!(map.shard_of(&key("acme", "okta")), 8);
        assert_eq!(map.shard_of(&key("acme", "auth0")), 38);
        assert_eq!(map.shard_of(&key("globex", "okta")), 21);
        assert_eq!(ShardMap::new(1).shard_of(&key("acme", "okta")), 0);
        assert_eq!(ShardMap::new(0).count(), 1);

        let mut counts = [0u32; 64];
        for n in 0..64_000 {
            counts[map.shard_of(&key("tenant", &format!("p{n}"))) as usize] += 1;
        }
        let (least, most) = (counts.iter().min(), counts.iter().max());
        assert!(
            least >= Some(&850) && most <= Some(&1150),
            "1,000 expected per shard: {counts:?}"
        );
    }

    #[test]
    fn shard_ranges_are_compact() {
        assert_eq!(shard_ranges(&[]), "none");
        assert_eq!(shard_ranges(&[4]), "4");
        assert_eq!(shard_ranges(&[0, 1, 2, 3, 7, 9, 10]), "0-3, 7, 9-10");
    }
}
