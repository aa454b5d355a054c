//! A fixed-bucket duration histogram, the shape Prometheus and OTLP explicit-bucket histograms
//! share, with quantile estimates for the local view.

/// Bucket upper bounds in seconds: the OpenTelemetry HTTP semantic conventions' advice, with
/// finer buckets below 5 ms so that loopback and in-datacenter calls get useful percentiles.
pub const BOUNDS: [f64; 18] = [
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
    5.0, 7.5, 10.0,
];

/// Counts per bucket (the last one is `+Inf`), sum and count.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub buckets: [u64; BOUNDS.len() + 1],
    pub sum: f64,
    pub count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: [0; BOUNDS.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    pub fn record(&mut self, seconds: f64) {
        let seconds = if seconds.is_finite() {
            seconds.max(0.0)
        } else {
            0.0
        };
        let i = BOUNDS.partition_point(|&b| b < seconds);
        self.buckets[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    /// What was recorded since `earlier` (a previous copy of this histogram).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let mut out = self.clone();
        for (b, e) in out.buckets.iter_mut().zip(&earlier.buckets) {
            *b = b.saturating_sub(*e);
        }
        out.sum = (self.sum - earlier.sum).max(0.0);
        out.count = self.count.saturating_sub(earlier.count);
        out
    }

    /// The `q` quantile (0..=1), interpolated linearly inside its bucket as Prometheus's
    /// `histogram_quantile` does; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let Some(&upper) = BOUNDS.get(i) else {
                    // The +Inf bucket: the highest finite bound is all that is known.
                    return Some(BOUNDS[BOUNDS.len() - 1]);
                };
                let lower = if i == 0 { 0.0 } else { BOUNDS[i - 1] };
                let within = (rank - seen as f64) / n as f64;
                return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
            }
            seen += n;
        }
        Some(BOUNDS[BOUNDS.len() - 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_upper_inclusive() {
        let mut h = Histogram::default();
        h.record(0.001);
        h.record(0.0011);
        h.record(99.0);
        h.record(f64::NAN);
        assert_eq!(h.buckets[1], 1, "0.001 is in le=0.001");
        assert_eq!(h.buckets[2], 1);
        assert_eq!(h.buckets[BOUNDS.len()], 1, "+Inf");
        assert_eq!(h.buckets[0], 1, "NaN counts as 0");
        assert_eq!(h.count, 4);
    }

    #[test]
    fn quantiles_interpolate() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for _ in 0..100 {
            h.record(0.003); // (0.0025, 0.005]
        }
        let p50 = h.quantile(0.5).unwrap();
        assert!((0.0025..=0.005).contains(&p50), "{p50}");
        h.record(20.0);
        assert_eq!(h.quantile(1.0), Some(10.0));
        let later = {
            let mut l = h.clone();
            l.record(0.2);
            l
        };
        let d = later.since(&h);
        assert_eq!(d.count, 1);
        assert!((d.sum - 0.2).abs() < 1e-9);
    }
}
