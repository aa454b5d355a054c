//! Head sampling as the OpenTelemetry SDKs do it, configured by `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG`.
//!
//! Every span of one trace gets the same decision: spans linked to a parent inside the agent
//! inherit the parent's decision, a remote parent's sampled flag is honoured by the parent-based
//! samplers, and the ratio sampler decides from the trace id alone, so each agent (and each
//! OpenTelemetry SDK using the same rule) decides alike for the same trace.

use tracing::warn;

/// The sampler's decision for a span without a parent inside the agent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// Samples a trace when the low 64 bits of its id are below `ratio * 2^64`.
    TraceIdRatio(f64),
    /// Follows the parent's flag when there is one, else the inner sampler.
    ParentBased(Root),
}

/// The root sampler of a parent-based sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::ParentBased(Root::AlwaysOn)
    }
}

fn ratio_samples(ratio: f64, trace_id: &[u8; 16]) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let bound = (ratio * (u64::MAX as f64)) as u64;
    u64::from_be_bytes(low) < bound
}

impl Root {
    fn sample(self, trace_id: &[u8; 16]) -> bool {
        match self {
            Root::AlwaysOn => true,
            Root::AlwaysOff => false,
            Root::TraceIdRatio(r) => ratio_samples(r, trace_id),
        }
    }
}

impl Sampler {
    /// The sampler named by `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`. As the
    /// OpenTelemetry specification asks, an unknown name or a bad argument is reported with a
    /// warning and the default is used instead.
    pub fn from_env() -> Self {
        let name = std::env::var("OTEL_TRACES_SAMPLER").ok();
        let arg = std::env::var("OTEL_TRACES_SAMPLER_ARG").ok();
        match Self::parse(name.as_deref(), arg.as_deref()) {
            Ok(s) => s,
            Err(msg) => {
                warn!("{msg}; using parentbased_always_on");
                Sampler::default()
            }
        }
    }

    /// Parses a sampler name and its argument.
    pub fn parse(name: Option<&str>, arg: Option<&str>) -> Result<Self, String> {
        let ratio = || -> Result<f64, String> {
            match arg.map(str::trim).filter(|a| !a.is_empty()) {
                None => Ok(1.0),
                Some(a) => match a.parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                    _ => Err(format!(
                        "OTEL_TRACES_SAMPLER_ARG={a:?} is not a ratio between 0 and 1"
                    )),
                },
            }
        };
        let name = name.map(str::trim).filter(|n| !n.is_empty());
        Ok(match name {
            None | Some("parentbased_always_on") => Sampler::ParentBased(Root::AlwaysOn),
            Some("always_on") => Sampler::AlwaysOn,
            Some("always_off") => Sampler::AlwaysOff,
            Some("traceidratio") => Sampler::TraceIdRatio(ratio()?),
            Some("parentbased_always_off") => Sampler::ParentBased(Root::AlwaysOff),
            Some("parentbased_traceidratio") => Sampler::ParentBased(Root::TraceIdRatio(ratio()?)),
            Some(other) => {
                return Err(format!(
                    "OTEL_TRACES_SAMPLER={other:?} is not a sampler the agent knows (always_on, \
                     always_off, traceidratio, parentbased_always_on, parentbased_always_off, \
                     parentbased_traceidratio)"
                ));
            }
        })
    }

    /// Decision for a span of `trace_id` whose parent (if any) is remote with the given flag.
    /// Spans with a parent inside the agent inherit that parent's decision instead.
    pub fn sample(&self, trace_id: &[u8; 16], remote_parent_sampled: Option<bool>) -> bool {
        match *self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::TraceIdRatio(r) => ratio_samples(r, trace_id),
            Sampler::ParentBased(root) => match remote_parent_sampled {
                Some(flag) => flag,
                None => root.sample(trace_id),
            },
        }
    }

    /// Decision for a span whose parent is a span the agent made: parent-based samplers follow
    /// the parent; the others decide from the trace id, which gives the same answer as for the
    /// parent.
    pub fn sample_child(&self, trace_id: &[u8; 16], parent_sampled: bool) -> bool {
        match self {
            Sampler::ParentBased(_) => parent_sampled,
            _ => self.sample(trace_id, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_name_and_rejects_bad_input() {
        assert_eq!(Sampler::parse(None, None), Ok(Sampler::default()));
        assert_eq!(
            Sampler::parse(Some("always_off"), None),
            Ok(Sampler::AlwaysOff)
        );
        assert_eq!(
            Sampler::parse(Some("traceidratio"), Some("0.25")),
            Ok(Sampler::TraceIdRatio(0.25))
        );
        assert_eq!(
            Sampler::parse(Some("parentbased_traceidratio"), None),
            Ok(Sampler::ParentBased(Root::TraceIdRatio(1.0)))
        );
        assert_eq!(
            Sampler::parse(Some("parentbased_always_off"), None),
            Ok(Sampler::ParentBased(Root::AlwaysOff))
        );
        assert!(Sampler::parse(Some("traceidratio"), Some("1.5")).is_err());
        assert!(Sampler::parse(Some("traceidratio"), Some("half")).is_err());
        assert!(Sampler::parse(Some("jaeger_remote"), None).is_err());
    }

    #[test]
    fn parent_based_honours_the_remote_flag() {
        let s = Sampler::default();
        let id = [7u8; 16];
        assert!(s.sample(&id, None));
        assert!(s.sample(&id, Some(true)));
        assert!(!s.sample(&id, Some(false)));
        let off = Sampler::ParentBased(Root::AlwaysOff);
        assert!(!off.sample(&id, None));
        assert!(off.sample(&id, Some(true)));
        assert!(!off.sample_child(&id, false));
        assert!(off.sample_child(&id, true));
        // Non-parent-based samplers ignore the flag.
        assert!(Sampler::AlwaysOn.sample(&id, Some(false)));
    }

    #[test]
    fn ratio_is_a_function_of_the_trace_id() {
        let s = Sampler::TraceIdRatio(0.5);
        let mut low = [0u8; 16];
        low[8] = 0x10;
        let mut high = [0u8; 16];
        high[8] = 0xf0;
        assert!(s.sample(&low, None));
        assert!(!s.sample(&high, None));
        assert_eq!(s.sample_child(&high, true), s.sample(&high, None));
        // About half of many ids.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut hits = 0;
        for _ in 0..10_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&x.to_be_bytes());
            hits += usize::from(s.sample(&id, None));
        }
        assert!((4_500..5_500).contains(&hits), "{hits}");
        assert!(!Sampler::TraceIdRatio(0.0).sample(&low, None));
        assert!(Sampler::TraceIdRatio(1.0).sample(&[0xff; 16], None));
    }
}
