//! What the agent knows about a traced process: its service name, the resource attributes its
//! spans carry, and the runtime that runs it (which decides whether its threads can be used to
//! link spans). Read once from /proc per process and cached (bounded).

use std::{collections::HashMap, path::Path, sync::Arc};

use crate::elf::Elf;

/// The runtime of a process, as far as linking spans by thread is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// Go: goroutines move between OS threads (M:N scheduling).
    Go,
    /// An event loop on libuv (Node.js and others): one thread serves many requests at once.
    Libuv,
    /// Anything else; threads may serve one request at a time.
    Native,
}

impl Runtime {
    /// True when a thread's current request says nothing about which request a call belongs to.
    pub fn multiplexes_threads(self) -> bool {
        matches!(self, Runtime::Go | Runtime::Libuv)
    }

    /// `process.runtime.name`, when the runtime is known.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Runtime::Go => Some("go"),
            Runtime::Libuv => Some("nodejs"),
            Runtime::Native => None,
        }
    }
}

/// Looks at the executable (Go sections, libuv's exported symbols) and the mapped libraries.
pub fn detect_runtime(dir: &Path) -> Runtime {
    if let Ok(elf) = Elf::open(&dir.join("exe")) {
        if elf.has_section(".go.buildinfo") || elf.has_section(".gopclntab") {
            return Runtime::Go;
        }
        if elf.defines_dynamic_symbol("uv_run") {
            return Runtime::Libuv;
        }
    }
    let maps = std::fs::read_to_string(dir.join("maps")).unwrap_or_default();
    if maps.lines().any(|l| l.contains("/libuv.so")) {
        return Runtime::Libuv;
    }
    Runtime::Native
}

/// Resource attributes of one traced process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// `OTEL_SERVICE_NAME` from the process's environment, else its executable's name.
    pub service_name: String,
    pub executable_name: String,
    pub executable_path: String,
    pub command_line: String,
    pub host_name: String,
    pub runtime: Runtime,
}

/// Why a process cannot be looked at.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("no process with pid {0}")]
    NotFound(u32),
    #[error("cannot read /proc/{pid}: {source}")]
    Io {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
}

/// The value of `name` in a NUL-separated environment block.
pub fn env_value<'a>(environ: &'a [u8], name: &str) -> Option<&'a str> {
    environ
        .split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .filter(|v| !v.is_empty())
}

/// This machine's host name.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// Reads a process's identity from `proc_root/PID` (normally `/proc`).
pub fn read(proc_root: &Path, pid: u32, host_name: &str) -> Result<ProcessInfo, ProcessError> {
    let dir = proc_root.join(pid.to_string());
    if !dir.exists() {
        return Err(ProcessError::NotFound(pid));
    }
    let io = |source| ProcessError::Io { pid, source };
    let cmdline = std::fs::read(dir.join("cmdline")).map_err(io)?;
    let command_line = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let executable_path = std::fs::read_link(dir.join("exe"))
        .map(|p| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string()
        })
        .unwrap_or_default();
    let comm = std::fs::read_to_string(dir.join("comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default();
    let executable_name = Path::new(&executable_path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or(comm);
    let environ = std::fs::read(dir.join("environ")).unwrap_or_default();
    let service_name = env_value(&environ, "OTEL_SERVICE_NAME")
        .map(str::to_string)
        .unwrap_or_else(|| executable_name.clone());
    Ok(ProcessInfo {
        pid,
        service_name,
        executable_name,
        executable_path,
        command_line,
        host_name: host_name.to_string(),
        runtime: detect_runtime(&dir),
    })
}

/// Cache of process identities, bounded to `capacity` entries.
#[derive(Debug)]
pub struct Processes {
    cache: HashMap<u32, Arc<ProcessInfo>>,
    capacity: usize,
    host_name: String,
}

impl Processes {
    pub fn new(capacity: usize) -> Self {
        Self {
            cache: HashMap::new(),
            capacity,
            host_name: host_name(),
        }
    }

    /// The identity of `pid`, read on first use. A process gone before it could be read still
    /// gets a minimal identity so its spans are not lost.
    pub fn get(&mut self, pid: u32) -> Arc<ProcessInfo> {
        if let Some(p) = self.cache.get(&pid) {
            return p.clone();
        }
        let info = read(Path::new("/proc"), pid, &self.host_name).unwrap_or_else(|err| {
            tracing::debug!(%err, pid, "process identity unavailable");
            ProcessInfo {
                pid,
                service_name: format!("pid-{pid}"),
                executable_name: String::new(),
                executable_path: String::new(),
                command_line: String::new(),
                host_name: self.host_name.clone(),
                runtime: Runtime::Native,
            }
        });
        if self.cache.len() >= self.capacity {
            // Entries are cheap to read again; dropping them all keeps the bound simple.
            self.cache.clear();
        }
        let info = Arc::new(info);
        self.cache.insert(pid, info.clone());
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lookup() {
        let env = b"PATH=/bin\0OTEL_SERVICE_NAME=checkout\0OTEL_SERVICE_NAME_X=no\0";
        assert_eq!(env_value(env, "OTEL_SERVICE_NAME"), Some("checkout"));
        assert_eq!(env_value(env, "HOME"), None);
        assert_eq!(
            env_value(b"OTEL_SERVICE_NAME=\0", "OTEL_SERVICE_NAME"),
            None
        );
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let info = read(Path::new("/proc"), me, "h").unwrap();
        assert_eq!(info.pid, me);
        assert!(!info.executable_name.is_empty());
        assert!(info.command_line.contains(&info.executable_name) || !info.command_line.is_empty());
        assert_eq!(info.runtime, Runtime::Native);
    }

    #[test]
    fn node_is_an_event_loop() {
        let mut child = std::process::Command::new("node")
            .args(["-e", "setTimeout(() => {}, 5000)"])
            .spawn()
            .expect("node is installed (cargo xtask setup)");
        let runtime = detect_runtime(&Path::new("/proc").join(child.id().to_string()));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(runtime, Runtime::Libuv);
    }

    #[test]
    fn fake_proc_tree_with_service_name() {
        let root = std::env::temp_dir().join(format!("agent-proc-{}", std::process::id()));
        let dir = root.join("77");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cmdline"), b"python3\0app.py\0--port\08000\0").unwrap();
        std::fs::write(dir.join("comm"), b"python3\n").unwrap();
        std::fs::write(dir.join("environ"), b"A=b\0OTEL_SERVICE_NAME=orders\0").unwrap();
        let info = read(&root, 77, "h").unwrap();
        assert_eq!(info.service_name, "orders");
        assert_eq!(info.executable_name, "python3");
        assert_eq!(info.command_line, "python3 app.py --port 8000");
        std::fs::write(dir.join("environ"), b"A=b\0").unwrap();
        assert_eq!(read(&root, 77, "h").unwrap().service_name, "python3");
        assert!(matches!(
            read(&root, 78, "h"),
            Err(ProcessError::NotFound(78))
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
