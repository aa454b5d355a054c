//! A bounded set of metric series. Labels come from traffic (routes, peers, status codes), so
//! the number of combinations is the traced applications' to decide, not ours: past the limit,
//! measurements for new combinations go to one overflow series per instrument (as the
//! OpenTelemetry SDKs do, with `otel.metric.overflow=true`) and are counted, never dropped and
//! never allowed to grow memory.

use std::{collections::HashMap, hash::Hash};

/// The attribute that marks an overflow series (OpenTelemetry's cardinality-limit convention).
pub const OVERFLOW_ATTRIBUTE: &str = "otel.metric.overflow";

/// Series keyed by `K`, at most `limit` of them plus the overflow series.
#[derive(Debug)]
pub struct Series<K, V> {
    map: HashMap<K, V>,
    limit: usize,
    overflowed: u64,
}

impl<K: Hash + Eq + Clone, V: Default> Series<K, V> {
    pub fn new(limit: usize) -> Self {
        Series {
            map: HashMap::new(),
            limit: limit.max(1),
            overflowed: 0,
        }
    }

    /// The series for `key`, or, when the limit is reached and `key` is new, the overflow
    /// series `overflow` makes of it. The flag says which.
    pub fn get(&mut self, key: K, overflow: impl FnOnce(&K) -> K) -> (&mut V, bool) {
        if self.map.contains_key(&key) || self.map.len() < self.limit {
            return (self.map.entry(key).or_default(), false);
        }
        self.overflowed += 1;
        let k = overflow(&key);
        (self.map.entry(k).or_default(), true)
    }

    /// Measurements that went to an overflow series.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_keys_past_the_limit_share_the_overflow_series() {
        let mut s: Series<String, u64> = Series::new(2);
        let over = |_: &String| "overflow".to_string();
        *s.get("a".into(), over).0 += 1;
        *s.get("b".into(), over).0 += 1;
        let (v, overflowed) = s.get("c".into(), over);
        *v += 1;
        assert!(overflowed);
        let (v, overflowed) = s.get("a".into(), over);
        *v += 1;
        assert!(!overflowed, "known keys keep their series");
        *s.get("d".into(), over).0 += 1;
        assert_eq!(s.len(), 3, "a, b and the overflow series");
        assert_eq!(s.overflowed(), 2);
        let overflow = s.iter().find(|(k, _)| *k == "overflow").unwrap().1;
        assert_eq!(*overflow, 2);
    }
}
