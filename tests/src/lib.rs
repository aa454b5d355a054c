//! Harness for the end-to-end tests: the real agent binary, real peer programs (Python, Node.js,
//! curl) and a real OTLP receiver. Nothing is mocked; these tests need root and a kernel that
//! loads the agent's eBPF programs, and fail loudly when it does not.

pub mod container;
pub mod metrics;
pub mod netns;
pub mod receiver;
pub mod servers;

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// The agent binary under test: `AGENT_BIN`, else the workspace's release build.
pub fn agent_bin() -> PathBuf {
    let bin = std::env::var_os("AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/release/agent"));
    assert!(
        bin.exists(),
        "agent binary {} missing: run the tests with `cargo xtask test`",
        bin.display()
    );
    bin
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// A peer program shipped in tests/peers.
pub fn peer(name: &str) -> PathBuf {
    workspace().join("tests/peers").join(name)
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Waits until something accepts connections on the port.
pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lines a child wrote, collected by a background thread.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn follow(stream: impl std::io::Read + Send + 'static) -> Self {
        let lines = Lines::default();
        let sink = lines.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                sink.lock().expect("lines lock").push(line);
            }
        });
        lines
    }

    pub fn get(&self) -> Vec<String> {
        self.0.lock().expect("lines lock").clone()
    }
}

/// A child process killed when dropped, with every process it started (it leads its own
/// process group: servers such as nginx and hypercorn fork workers that would otherwise outlive
/// the test).
pub struct Proc {
    pub child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Proc {
    /// Spawns a program with piped output, in a process group of its own.
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = Lines::follow(child.stdout.take().expect("stdout"));
        let stderr = Lines::follow(child.stderr.take().expect("stderr"));
        Proc {
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes a line to the child's stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to child");
        stdin.flush().expect("flush child stdin");
    }

    /// Waits for the child to exit on its own.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the output threads catch up.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit in time; stderr: {:?}",
                self.stderr.get()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group our child leads (see `spawn`).
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent, running.
/// `--pid P` for each of `pids`.
pub fn pid_args(pids: &[u32]) -> Vec<String> {
    pids.iter()
        .flat_map(|p| ["--pid".to_string(), p.to_string()])
        .collect()
}

pub struct Agent {
    pub proc: Proc,
}

impl Agent {
    /// Starts the agent and waits until its programs are attached. Panics with the agent's
    /// stderr when it cannot start: a kernel test never skips.
    pub fn start(args: &[String], env: &[(&str, &str)]) -> Agent {
        let mut cmd = Command::new(agent_bin());
        cmd.args(args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
            .env_remove("OTEL_TRACES_EXPORTER")
            .env_remove("OTEL_METRICS_EXPORTER")
            .env_remove("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
            .env("AGENT_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn(&mut cmd);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if proc
                .stderr
                .get()
                .iter()
                .any(|l| l.contains("ready: tracing"))
            {
                // The log line is written once every program is attached and the running
                // processes are selected.
                return Agent { proc };
            }
            if let Some(status) = proc.child.try_wait().expect("try_wait") {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "the agent exited ({status}) before attaching; eBPF could not be loaded?\n{}",
                    proc.stderr.get().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "agent did not attach in time:\n{}",
                proc.stderr.get().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent tracing `pids`, exporting to `rx` with a short batch delay.
    pub fn tracing(pids: &[u32], rx: &receiver::Receiver) -> Agent {
        let mut args = pid_args(pids);
        args.extend([
            "--otlp-endpoint".into(),
            rx.endpoint.clone(),
            "--otlp-protocol".into(),
            rx.protocol.into(),
        ]);
        Agent::start(&args, &[("OTEL_BSP_SCHEDULE_DELAY", "200")])
    }

    /// Waits until the agent logs a line containing every one of `needles`.
    pub fn wait_log(&self, needles: &[&str]) {
        eventually(Duration::from_secs(20), || {
            self.proc
                .stderr
                .get()
                .iter()
                .any(|l| needles.iter().all(|n| l.contains(n)))
                .then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "the agent never logged {needles:?}:\n{}",
                self.proc.stderr.get().join("\n")
            )
        });
    }

    /// Stops the agent with a signal and checks it exits 0 (after flushing).
    pub fn stop_with(mut self, sig: i32) -> (Vec<String>, Vec<String>) {
        self.proc.signal(sig);
        let status = self.proc.wait(Duration::from_secs(60));
        let stderr = self.proc.stderr.get();
        assert!(
            status.success(),
            "agent exit {status}; stderr:\n{}",
            stderr.join("\n")
        );
        (self.proc.stdout.get(), stderr)
    }

    /// Stops the agent with SIGINT.
    pub fn stop(self) -> (Vec<String>, Vec<String>) {
        self.stop_with(libc::SIGINT)
    }
}

/// One curl request: status and the wall-clock window around it.
#[derive(Debug, Clone)]
pub struct Call {
    pub url: String,
    pub status: u16,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// Runs curl once for each URL (a fresh connection each) and returns what happened.
pub fn curl(url: &str, extra: &[&str]) -> Call {
    let start_ns = now_ns();
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl runs");
    let end_ns = now_ns();
    let status = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    Call {
        url: url.to_string(),
        status,
        start_ns,
        end_ns,
    }
}

/// Polls until `f` holds or the time runs out.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One HTTP/1.1 GET on a fresh connection, from the test process itself (which is never traced):
/// the status and the body. Extra header lines are sent as given.
pub fn http_get(host: &str, port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream =
        TcpStream::connect((host, port)).unwrap_or_else(|e| panic!("connect {host}:{port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: e2e/1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).expect("send request");
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().expect("content-length");
        }
    }
    let mut body = vec![0u8; length];
    std::io::Read::read_exact(&mut reader, &mut body).expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Waits until the child printed `ready` on stdout.
pub fn wait_ready(p: &Proc, what: &str) {
    eventually(Duration::from_secs(60), || {
        p.stdout
            .get()
            .iter()
            .any(|l| l.trim() == "ready")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("{what} not ready; stderr: {:?}", p.stderr.get()));
}
