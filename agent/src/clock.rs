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

/// Difference between wall-clock and monotonic time now (two vDSO calls). Read afresh for each
/// batch of records (`WallClock`), so NTP adjustments are followed.
pub fn wall_offset_ns() -> u64 {
    let real = now_ns(libc::CLOCK_REALTIME);
    let mono = monotonic_ns();
    real.saturating_sub(mono)
}

/// The wall-clock offset for the spans of one batch of records, read on first use. A batch is
/// handled in a few milliseconds at most, in which NTP's slewing moves the clock by a few
/// microseconds at most (0.05%); reading the offset per span took two vDSO calls each, ~2% of
/// the agent's CPU at nginx's request rate. Both ends of a span still use one offset, so its
/// duration is exactly the kernel's.
#[derive(Debug, Default)]
pub struct WallClock {
    offset_ns: Option<u64>,
}

impl WallClock {
    /// The offset for this batch (`wall_offset_ns`, read at the first call since `refresh`).
    pub fn offset_ns(&mut self) -> u64 {
        *self.offset_ns.get_or_insert_with(wall_offset_ns)
    }

    /// Starts a new batch: the next `offset_ns` reads the clocks again.
    pub fn refresh(&mut self) {
        self.offset_ns = None;
    }
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

    #[test]
    fn a_batch_reads_the_offset_once() {
        let mut clock = WallClock::default();
        let first = clock.offset_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(clock.offset_ns(), first, "kept within the batch");
        clock.refresh();
        let again = clock.offset_ns();
        // The same offset unless the clock was adjusted meanwhile; read afresh either way.
        assert!(again.abs_diff(first) < Duration::from_millis(50).as_nanos() as u64);
        assert_eq!(clock.offset_ns, Some(again));
    }
}
