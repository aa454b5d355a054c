//! Kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to wall-clock time for spans.

fn now_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Current CLOCK_MONOTONIC, the clock the kernel programs stamp events with.
pub fn monotonic_ns() -> u64 {
    now_ns(libc::CLOCK_MONOTONIC)
}

/// Difference between wall-clock and monotonic time now. Read afresh for each span (two vDSO
/// calls), so NTP adjustments are followed, and used for both ends of a span so its duration is
/// exactly the kernel's.
pub fn wall_offset_ns() -> u64 {
    let real = now_ns(libc::CLOCK_REALTIME);
    let mono = monotonic_ns();
    real.saturating_sub(mono)
}

/// Converts a monotonic kernel timestamp to wall-clock nanoseconds since the Unix epoch, with
/// an offset from `wall_offset_ns`.
pub fn to_unix_ns(mono_ns: u64, offset_ns: u64) -> u64 {
    mono_ns.saturating_add(offset_ns)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::*;

    #[test]
    fn monotonic_now_maps_to_wall_now() {
        let wall = to_unix_ns(monotonic_ns(), wall_offset_ns());
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let diff = (now.as_nanos() as u64).abs_diff(wall);
        assert!(
            diff < Duration::from_millis(50).as_nanos() as u64,
            "{diff} ns"
        );
    }
}
