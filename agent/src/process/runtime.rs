//! Which runtime runs a process, as far as linking spans by thread is concerned: Go and libuv
//! event loops multiplex requests over threads, so their threads say nothing about which request
//! a call belongs to.

use std::path::Path;

use crate::elf::Elf;

/// The runtime of a process.
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

/// Looks at the executable (Go sections, libuv's exported symbols) and the mapped libraries of
/// the process whose `/proc` directory is `dir`.
pub fn detect(dir: &Path) -> Runtime {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_native() {
        assert_eq!(detect(Path::new("/proc/self")), Runtime::Native);
    }

    #[test]
    fn node_is_an_event_loop() {
        let mut child = std::process::Command::new("node")
            .args(["-e", "setTimeout(() => {}, 5000)"])
            .spawn()
            .expect("node is installed (cargo xtask setup)");
        let runtime = detect(&Path::new("/proc").join(child.id().to_string()));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(runtime, Runtime::Libuv);
    }
}
