//! A bounded set of metric series. Labels come from traffic (routes, peers, status codes), so
//! the number of combinations is the traced applications' to decide, not ours: past the limit,
//! measurements for new combinations go to one overflow series per instrument (as the
//! OpenTelemetry SDKs do, with `otel.metric.overflow=true`) and are counted, never dropped and
//! never allowed to grow memory.
//!
//! Series are found by a fingerprint the caller computes from borrowed data, and compared the
//! same way: a measurement for a known series allocates nothing.

use foldhash::{HashMap, HashMapExt as _};
use std::hash::{BuildHasher, Hash, Hasher};

/// The attribute that marks an overflow series (OpenTelemetry's cardinality-limit convention).
pub const OVERFLOW_ATTRIBUTE: &str = "otel.metric.overflow";

/// A fast hasher for fingerprints (not exposed to untrusted keys' collisions: a collision only
/// costs a comparison).
pub fn hasher() -> impl Hasher {
    foldhash::fast::FixedState::with_seed(0x5eed).build_hasher()
}

/// The fingerprint of a hashable value.
pub fn fingerprint(v: &impl Hash) -> u64 {
    let mut h = hasher();
    v.hash(&mut h);
    h.finish()
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

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.map.values_mut().flatten().map(|(_, v)| v)
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
