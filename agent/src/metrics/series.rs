//! A bounded set of metric series. Labels come from traffic (routes, peers, status codes), so
//! the number of combinations is the traced applications' to decide, not ours: past the limit,
//! measurements for new combinations go to one overflow series per instrument (as the
//! OpenTelemetry SDKs do, with `otel.metric.overflow=true`) and are counted, never dropped and
//! never allowed to grow memory.
//!
//! Series are found by a fingerprint the caller computes from borrowed data, and compared the
//! same way: a measurement for a known series allocates nothing.

use foldhash::{HashMap, HashMapExt as _};
use std::hash::{BuildHasher, Hash};

/// The attribute that marks an overflow series (OpenTelemetry's cardinality-limit convention).
pub const OVERFLOW_ATTRIBUTE: &str = "otel.metric.overflow";

/// The fingerprint of a hashable value (the overflow series'; a span's series use `Mix`). Not
/// exposed to untrusted keys' collisions: a collision only costs a comparison.
pub fn fingerprint(v: &impl Hash) -> u64 {
    foldhash::fast::FixedState::with_seed(0x5eed).hash_one(v)
}

/// A fingerprint built a word at a time, every step inlined: finding a span's series starts
/// with one, and through `Hasher` (a call per value and per enum discriminant) it cost ~600
/// instructions a span. Each word is folded in with a 64×64→128-bit multiply (the step of
/// foldhash and wyhash), strings 8 bytes at a time with their length in the last word.
#[derive(Debug, Clone, Copy)]
pub struct Mix(u64);

impl Mix {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;

    pub fn new(seed: u64) -> Self {
        Mix(seed ^ 0x243F_6A88_85A3_08D3)
    }

    #[inline]
    pub fn word(&mut self, w: u64) {
        let m = u128::from(self.0 ^ w) * u128::from(Self::K ^ w.rotate_left(32));
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }

    #[inline]
    pub fn bytes(&mut self, b: &[u8]) {
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        // At most 7 bytes are left, read as two overlapping 4-byte words or byte by byte (a
        // copy of a variable length was a `memcpy` call per string). The length goes in too,
        // so that "a" and "a\0", or a string and its continuation in the next value, differ.
        let rest = chunks.remainder();
        let tail = match (rest.first_chunk::<4>(), rest.last_chunk::<4>()) {
            (Some(lo), Some(hi)) => {
                u64::from(u32::from_le_bytes(*lo)) | u64::from(u32::from_le_bytes(*hi)) << 32
            }
            _ => rest.iter().fold(0, |t, &byte| t << 8 | u64::from(byte)),
        };
        self.word(tail ^ (b.len() as u64).rotate_right(8));
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

/// Series keyed by `K`, at most `limit` of them plus the overflow series.
#[derive(Debug)]
pub struct Series<K, V> {
    map: HashMap<u64, Vec<(K, V)>>,
    len: usize,
    limit: usize,
    overflowed: u64,
}

impl<K: PartialEq, V: Default> Series<K, V> {
    pub fn new(limit: usize) -> Self {
        Series {
            map: HashMap::new(),
            len: 0,
            limit: limit.max(1),
            overflowed: 0,
        }
    }

    fn find(&self, hash: u64, is: impl Fn(&K) -> bool) -> Option<usize> {
        self.map.get(&hash)?.iter().position(|(k, _)| is(k))
    }

    fn insert(&mut self, hash: u64, key: K) -> &mut V {
        let bucket = self.map.entry(hash).or_default();
        bucket.push((key, V::default()));
        self.len += 1;
        let last = bucket.len() - 1;
        &mut bucket[last].1
    }

    fn at(&mut self, hash: u64, i: usize) -> &mut V {
        let bucket = self.map.get_mut(&hash).expect("found just before");
        &mut bucket[i].1
    }

    /// The series whose fingerprint is `hash` and key satisfies `is`; made by `make` when new.
    /// When the limit is reached and the series is new, the overflow series `overflow` gives
    /// (fingerprint and key) instead. The flag says which.
    pub fn get(
        &mut self,
        hash: u64,
        is: impl Fn(&K) -> bool,
        make: impl FnOnce() -> K,
        overflow: impl FnOnce() -> (u64, K),
    ) -> (&mut V, bool) {
        if let Some(i) = self.find(hash, &is) {
            return (self.at(hash, i), false);
        }
        if self.len < self.limit {
            return (self.insert(hash, make()), false);
        }
        self.overflowed += 1;
        let (oh, ok) = overflow();
        match self.find(oh, |k| *k == ok) {
            Some(i) => (self.at(oh, i), true),
            None => (self.insert(oh, ok), true),
        }
    }

    /// Measurements that went to an overflow series.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.values().flatten().map(|(k, v)| (k, v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.map.values_mut().flatten().map(|(k, v)| (&*k, v))
    }

    /// Counts a measurement that went to an overflow series another way (a series' overflow
    /// share of processes, `otlp::Share::record`).
    pub fn count_overflow(&mut self) {
        self.overflowed += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(s: &'a mut Series<String, u64>, key: &str) -> (&'a mut u64, bool) {
        s.get(
            fingerprint(&key),
            |k| k == key,
            || key.to_string(),
            || (fingerprint(&"overflow"), "overflow".to_string()),
        )
    }

    #[test]
    fn new_keys_past_the_limit_share_the_overflow_series() {
        let mut s: Series<String, u64> = Series::new(2);
        *get(&mut s, "a").0 += 1;
        *get(&mut s, "b").0 += 1;
        let (v, overflowed) = get(&mut s, "c");
        *v += 1;
        assert!(overflowed);
        let (v, overflowed) = get(&mut s, "a");
        *v += 1;
        assert!(!overflowed, "known keys keep their series");
        *get(&mut s, "d").0 += 1;
        assert_eq!(s.len(), 3, "a, b and the overflow series");
        assert_eq!(s.overflowed(), 2);
        let overflow = s.iter().find(|(k, _)| *k == "overflow").unwrap().1;
        assert_eq!(*overflow, 2);
        assert_eq!(*s.iter().find(|(k, _)| *k == "a").unwrap().1, 2);
    }

    #[test]
    fn mixed_fingerprints_tell_values_apart() {
        let fp = |parts: &[&str]| {
            let mut m = Mix::new(1);
            for p in parts {
                m.bytes(p.as_bytes());
            }
            m.finish()
        };
        let mut seen = std::collections::HashSet::new();
        for n in 0..20_000 {
            assert!(seen.insert(fp(&[&format!("/users/{n}")])), "{n}");
        }
        assert_eq!(fp(&["/a", "GET"]), fp(&["/a", "GET"]));
        assert_ne!(fp(&["a"]), fp(&["a\0"]));
        assert_ne!(fp(&["ab", "c"]), fp(&["a", "bc"]));
        assert_ne!(fp(&["", "x"]), fp(&["x", ""]));
        assert_ne!(fp(&["12345678"]), fp(&["1234567", "8"]));
        assert_ne!(fp(&["1234567812345678"]), fp(&["12345678", "12345678"]));
    }

    #[test]
    fn colliding_fingerprints_keep_their_own_series() {
        let mut s: Series<String, u64> = Series::new(10);
        for key in ["x", "y"] {
            *s.get(7, |k| k == key, || key.to_string(), || (0, String::new()))
                .0 += 1;
        }
        assert_eq!(s.len(), 2);
        *s.get(7, |k| k == "x", || unreachable!(), || (0, String::new()))
            .0 += 1;
        assert_eq!(*s.iter().find(|(k, _)| *k == "x").unwrap().1, 2);
    }
}
