//! Timers as `timerfd`s in tokio's epoll set: one wake-up per expiry, none otherwise.
//!
//! tokio's own timers wake the runtime more often than they fire. Its wheel cascades a timer
//! that is more than 64 ms away down its levels with a wake-up of its own, and it moves a timer
//! to a later deadline lazily, waking first at the old one. Traced with `strace`, a one-second
//! interval woke an idle agent four to five times a second, and wake-ups are what an idle agent
//! costs: ~100 us of CPU each on these VMs. So the agent's periodic work (housekeeping, the batch
//! delay, the linker's tick) and the ring buffer's backstop run on these instead.

use std::{
    os::fd::{AsFd as _, AsRawFd, RawFd},
    time::Duration,
};

use anyhow::{Context as _, Result};
use nix::sys::{
    time::TimeSpec,
    timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags},
};
use tokio::io::unix::AsyncFd;
use tracing::warn;

use crate::capture::register;

/// A `TimerFd` as tokio registers fds (by raw fd).
struct Fd(TimerFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// A monotonic timer, one-shot or periodic, disarmed when made.
pub struct Timer {
    fd: AsyncFd<Fd>,
    /// What it is for, in messages.
    what: &'static str,
    armed: bool,
    periodic: bool,
}

impl Timer {
    /// A disarmed timer; it needs the tokio runtime (its fd joins the reactor).
    pub fn new(what: &'static str) -> Result<Self> {
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .with_context(|| format!("creating the {what} timer (timerfd)"))?;
        Ok(Timer {
            fd: register(Fd(fd), what)?,
            what,
            armed: false,
            periodic: false,
        })
    }

    /// Expires every `period` from now on (a period it misses is not made up for).
    pub fn every(&mut self, period: Duration) {
        self.set(Expiration::Interval(TimeSpec::from_duration(period)), true);
    }

    /// Expires once, `after` from now. Setting a timer replaces its deadline and clears an
    /// expiry not waited for yet.
    pub fn once(&mut self, after: Duration) {
        self.set(Expiration::OneShot(TimeSpec::from_duration(after)), false);
    }

    fn set(&mut self, at: Expiration, periodic: bool) {
        match self.fd.get_ref().0.set(at, TimerSetTimeFlags::empty()) {
            Ok(()) => {
                self.armed = true;
                self.periodic = periodic;
            }
            // Not expected with valid arguments; the work it paces then waits for other events.
            Err(err) => warn!(%err, "setting the {} timer failed", self.what),
        }
    }

    /// Stops the timer.
    pub fn disarm(&mut self) {
        match self.fd.get_ref().0.unset() {
            Ok(()) => self.armed = false,
            Err(err) => warn!(%err, "stopping the {} timer failed", self.what),
        }
    }

    pub fn armed(&self) -> bool {
        self.armed
    }

    /// Waits for the next expiry (a one-shot timer is disarmed by it). Readiness can be stale:
    /// the timer expired while its task was busy and was set again since; only a read that
    /// finds an expiry counts. Cancel-safe: an expiry is read only when it is returned.
    pub async fn expired(&mut self) {
        loop {
            let mut guard = match self.fd.readable().await {
                Ok(guard) => guard,
                Err(err) => {
                    // The fd left the reactor (the runtime is shutting down): never again.
                    warn!(%err, "waiting for the {} timer failed", self.what);
                    return std::future::pending().await;
                }
            };
            let expired = guard.get_inner().0.wait().is_ok();
            guard.clear_ready();
            if expired {
                if !self.periodic {
                    self.armed = false;
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn one_shot_and_periodic_expiries() {
        let mut t = Timer::new("test").unwrap();
        assert!(!t.armed());
        let began = Instant::now();
        t.once(Duration::from_millis(20));
        assert!(t.armed());
        t.expired().await;
        assert!(began.elapsed() >= Duration::from_millis(20));
        assert!(!t.armed(), "a one-shot timer is spent");

        t.every(Duration::from_millis(10));
        for _ in 0..3 {
            t.expired().await;
        }
        assert!(t.armed() && began.elapsed() >= Duration::from_millis(50));
        t.disarm();
        let waited = tokio::time::timeout(Duration::from_millis(50), t.expired()).await;
        assert!(waited.is_err(), "a disarmed timer never expires");
    }

    #[tokio::test]
    async fn setting_again_replaces_the_deadline() {
        let mut t = Timer::new("test").unwrap();
        t.once(Duration::from_millis(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Expired, unread; set again, the old expiry is gone.
        let began = Instant::now();
        t.once(Duration::from_millis(40));
        t.expired().await;
        assert!(began.elapsed() >= Duration::from_millis(40));
    }
}
