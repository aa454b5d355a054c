//! Kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to wall-clock time for spans.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Converts a monotonic kernel timestamp to wall-clock time with a given offset.
pub fn to_wall_with(mono_ns: u64, offset_ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(mono_ns.saturating_add(offset_ns))
}

/// Converts a monotonic kernel timestamp to wall-clock time.
pub fn to_wall(mono_ns: u64) -> SystemTime {
    to_wall_with(mono_ns, wall_offset_ns())
}

/// Nanoseconds since the Unix epoch.
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_now_maps_to_wall_now() {
        let wall = to_wall(monotonic_ns());
        let diff = SystemTime::now()
            .duration_since(wall)
            .unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_millis(50), "{diff:?}");
    }
}
