//! A fast, unkeyed hash for maps whose keys come from the config (model names, upstream pool
//! keys), looked up on every request.
//!
//! std's `HashMap` hashes with SipHash-1-3 under a random key, which defends a map against
//! keys chosen to collide (HashDoS). Here every key is inserted from the operator's config;
//! a client only *looks up* names. A lookup probes the table until it finds the key or an
//! empty group, and how far that is depends on where the config's keys sit, which a client
//! cannot change: a crafted name costs at most the longest probe of the table, like any
//! other name. SipHash cost ~200 instructions per lookup (three lookups per proxied
//! request, ~2% of a request's user-space instructions, callgrind); this costs ~2 per 8
//! bytes (the word-at-a-time multiply-rotate of rustc's `FxHasher`).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` keyed by config-defined names (see the module docs for why unkeyed is safe).
pub type ConfigMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// An empty [`ConfigMap`] with room for `n` entries.
pub fn config_map<K, V>(n: usize) -> ConfigMap<K, V> {
    HashMap::with_capacity_and_hasher(n, BuildHasherDefault::default())
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

/// rustc's `FxHasher`: per word, rotate, xor, multiply.
#[derive(Default, Clone, Copy)]
pub struct FastHasher {
    hash: u64,
}

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            // The length keeps "a" and "a\0" apart.
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    fn hash(s: &str) -> u64 {
        BuildHasherDefault::<FastHasher>::default().hash_one(s)
    }

    #[test]
    fn names_that_differ_hash_apart() {
        let names = [
            "",
            "a",
            "a\0",
            "b",
            "gpt-4o",
            "gpt-4o-mini",
            "llama-3.1-8b",
            "llama-3.1-8c",
        ];
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                assert_ne!(hash(a), hash(b), "{a:?} vs {b:?}");
            }
        }
        assert_eq!(hash("gpt-4o"), hash("gpt-4o"));
    }

    #[test]
    fn a_config_map_finds_what_it_holds() {
        let mut map: ConfigMap<String, usize> = config_map(4);
        for i in 0..1000 {
            map.insert(format!("model-{i}"), i);
        }
        for i in 0..1000 {
            assert_eq!(map.get(format!("model-{i}").as_str()), Some(&i));
        }
        assert_eq!(map.get("model-1000"), None);
    }
}
