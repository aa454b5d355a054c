//! The processes a benchmark starts, and what `/proc` and the agent's `/metrics` say about them.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// A child process killed (with its process group) when dropped.
pub struct Spawned {
    pub child: Child,
    pub name: String,
}

impl Spawned {
    /// Starts `cmd` in its own process group, output discarded.
    pub fn start(name: &str, cmd: &mut Command) -> Result<Self> {
        Self::spawn(name, cmd.stdout(Stdio::null()).stderr(Stdio::null()))
    }

    /// Starts `cmd` in its own process group, its output appended to `log`.
    pub fn start_logged(name: &str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let file = std::fs::File::create(log)?;
        let err = file.try_clone()?;
        Self::spawn(name, cmd.stdout(file).stderr(err))
    }

    fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        use std::os::unix::process::CommandExt as _;
        let child = cmd
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Spawned {
            child,
            name: name.to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` and waits (up to 60 s) for the exit status.
    pub fn stop(mut self, signal: i32) -> Result<std::process::ExitStatus> {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not stop", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) of the child's process group.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// Waits until something accepts connections on the port.
pub fn wait_port(port: u16, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{what} never listened on port {port}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A free loopback port.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// User plus system CPU time of a process (all its threads, live or exited), in microseconds,
/// from its CPU-time clock: nanoseconds, where `/proc/PID/stat` counts 10 ms ticks (a Python
/// round's ~50 ms of agent CPU was off by up to a fifth).
pub fn cpu_us(pid: u32) -> Result<u64> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: the out-pointer is a local; the call only reads `pid`.
    let rc = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    if rc != 0 {
        bail!(
            "the CPU clock of pid {pid}: {}",
            std::io::Error::from_raw_os_error(rc)
        );
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: as above.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        bail!(
            "reading the CPU clock of pid {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000)
}

/// Lets this process and the load generators and servers it starts open up to `n` files (the
/// 10k-connection scenario), as far as the hard limit allows; returns the limit set.
pub fn raise_fd_limit(n: u64) -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or fill the struct given, which outlives the calls.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    limit.rlim_cur = n.min(limit.rlim_max);
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        bail!(
            "cannot raise the open-file limit to {}: {}",
            limit.rlim_cur,
            std::io::Error::last_os_error()
        );
    }
    Ok(limit.rlim_cur)
}

/// Resets a process's `VmHWM` to its current resident size.
pub fn reset_peak_rss(pid: u32) -> Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of pid {pid}"))
}

/// Peak resident memory (`VmHWM`) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM missing")
}

/// Sum of `run_time_ns` and `run_cnt` over the BPF programs a process holds open (their
/// fdinfo reports both while `kernel.bpf_stats_enabled` is 1).
pub fn bpf_run_stats(pid: u32) -> Result<(u64, u64)> {
    let (mut ns, mut count) = (0, 0);
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        if !text.contains("prog_type:") {
            continue;
        }
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("run_time_ns:") {
                ns += v.trim().parse::<u64>().unwrap_or(0);
            } else if let Some(v) = line.strip_prefix("run_cnt:") {
                count += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Ok((ns, count))
}

/// Turns kernel BPF run-time statistics on, and back to what they were when dropped.
pub struct BpfStats(String);

impl BpfStats {
    const PATH: &'static str = "/proc/sys/kernel/bpf_stats_enabled";

    pub fn enable() -> Result<Self> {
        let before = std::fs::read_to_string(Self::PATH).context("reading bpf_stats_enabled")?;
        std::fs::write(Self::PATH, "1").context("enabling BPF statistics (needs root)")?;
        Ok(BpfStats(before.trim().to_string()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

/// The agent's Prometheus text (`/metrics`), as name (with labels) → value.
pub fn scrape(port: u16) -> Result<HashMap<String, f64>> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    BufReader::new(s).read_to_string(&mut body)?;
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect())
}

/// Waits until a line of the file contains `needle`.
pub fn wait_log(path: &Path, needle: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(f) = std::fs::File::open(path)
            && BufReader::new(f)
                .lines()
                .any(|l| l.is_ok_and(|l| l.contains(needle)))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            bail!("never logged {needle:?}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
