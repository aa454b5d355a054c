//! Attaching the TLS probes. A dedicated thread owns the loaded eBPF object (aya attaches
//! programs through it) and serves requests from the process loop: scan a process's mapped
//! files when it becomes traced or maps a new executable file, forget it when it exits. Each
//! library file is inspected once (cached by device and inode) however many processes map it;
//! probes are attached per process (the kernel then installs the breakpoints only in that
//! process's memory), so untraced processes using the same library pay nothing.
//!
//! Dropping the eBPF object detaches every program: the thread does that when told to stop
//! ([`Running::stop`]), which is how shutdown detaches every probe and tracepoint.

use std::{
    collections::{HashMap, HashSet},
    num::NonZeroU32,
    path::PathBuf,
    sync::{Arc, mpsc},
    thread::JoinHandle,
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use tracing::{debug, info, warn};

use super::library::{self, FileId, Library};
use crate::stats::Stats;

/// The kernel programs: one entry and one return program for every probed function.
pub const ENTRY_PROGRAM: &str = "ssl_enter";
pub const RETURN_PROGRAM: &str = "ssl_exit";

/// Requests waiting for the attacher; beyond this, scans are dropped and counted.
const QUEUE: usize = 4096;
/// Library files whose inspection is remembered.
const FILE_CACHE: usize = 4096;

enum Request {
    Scan(u32),
    Forget(u32),
    Stop,
}

/// The process loop's handle on the attacher thread.
#[derive(Clone)]
pub struct Attacher {
    tx: mpsc::SyncSender<Request>,
    stats: Arc<Stats>,
}

/// The attacher thread itself, stopped at shutdown.
pub struct Running {
    tx: mpsc::SyncSender<Request>,
    thread: JoinHandle<()>,
}

impl Running {
    /// Detaches every probe and every other program (the thread owns the eBPF object), and
    /// waits until that is done.
    pub fn stop(self) {
        let _ = self.tx.send(Request::Stop);
        if self.thread.join().is_err() {
            warn!("the TLS attacher thread panicked");
        }
    }
}

impl Attacher {
    /// Loads the TLS programs into `ebpf` (which the attacher then owns) and starts the thread.
    pub fn start(mut ebpf: Ebpf, proc_root: PathBuf, stats: Arc<Stats>) -> Result<(Self, Running)> {
        for name in [ENTRY_PROGRAM, RETURN_PROGRAM] {
            let program: &mut UProbe = crate::loader::program(&mut ebpf, name, "uprobe")?;
            program
                .load()
                .with_context(|| format!("the kernel refused to load {name}"))?;
        }
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let worker = Worker {
            ebpf,
            proc_root,
            files: HashMap::new(),
            procs: HashMap::new(),
            stats: stats.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("tls-attach".into())
            .spawn(move || worker.run(rx))
            .context("starting the TLS attacher thread")?;
        Ok((
            Attacher {
                tx: tx.clone(),
                stats,
            },
            Running { tx, thread },
        ))
    }

    /// Looks for TLS libraries in `pid` (again: only files not seen before in it are read).
    pub fn scan(&self, pid: u32) {
        if self.tx.try_send(Request::Scan(pid)).is_err() {
            self.stats.inc(&self.stats.tls_scans_dropped);
        }
    }

    /// `pid` exited or runs a new program: its probes go.
    pub fn forget(&self, pid: u32) {
        // Detaching matters less than scanning: a full queue only delays it to shutdown.
        let _ = self.tx.try_send(Request::Forget(pid));
    }
}

/// Probes attached in one process.
#[derive(Default)]
struct ProcProbes {
    files: HashSet<FileId>,
    links: Vec<(&'static str, UProbeLinkId)>,
    /// Said once that no TLS library was found (one may still be loaded later).
    reported_none: bool,
}

struct Worker {
    ebpf: Ebpf,
    proc_root: PathBuf,
    files: HashMap<FileId, Library>,
    procs: HashMap<u32, ProcProbes>,
    stats: Arc<Stats>,
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            // Coalesce a burst (a process start maps dozens of libraries): each pid once.
            let mut scans = Vec::new();
            let mut next = Some(first);
            while let Some(req) = next {
                match req {
                    Request::Scan(pid) if !scans.contains(&pid) => scans.push(pid),
                    Request::Scan(_) => {}
                    Request::Forget(pid) => {
                        scans.retain(|p| *p != pid);
                        self.forget(pid);
                    }
                    Request::Stop => return, // dropping `self.ebpf` detaches everything
                }
                next = rx.try_recv().ok();
            }
            for pid in scans {
                self.scan(pid);
            }
        }
    }

    fn scan(&mut self, pid: u32) {
        let root = self.proc_root.join(pid.to_string());
        let Ok(maps) = std::fs::read_to_string(root.join("maps")) else {
            return; // gone already
        };
        for mapped in library::executable_files(&maps) {
            let known = self.procs.entry(pid).or_default();
            if !known.files.insert(mapped.id.clone()) {
                continue;
            }
            // The file as the process sees it, through its own mount namespace.
            let path = root.join("root").join(mapped.path.trim_start_matches('/'));
            let library = self.inspect(&mapped.id, &path);
            match library {
                Library::Tls(points) => self.attach(pid, &mapped.path, &path, &points),
                Library::Unsupported(why) => {
                    self.stats.inc(&self.stats.tls_libraries_unsupported);
                    debug!(pid, library = %mapped.path, why, "TLS library not probed");
                }
                Library::Other => {}
            }
        }
        if let Some(p) = self.procs.get_mut(&pid)
            && p.links.is_empty()
            && !p.reported_none
        {
            p.reported_none = true;
            self.stats.inc(&self.stats.tls_processes_without_library);
            debug!(
                pid,
                "no TLS library with SSL_read/SSL_write symbols mapped (yet)"
            );
        }
    }

    fn inspect(&mut self, id: &FileId, path: &std::path::Path) -> Library {
        if let Some(l) = self.files.get(id) {
            return l.clone();
        }
        let library = library::inspect(path).unwrap_or_else(|err| {
            debug!(%err, "not inspected");
            Library::Other
        });
        if self.files.len() >= FILE_CACHE {
            self.files.clear();
        }
        self.files.insert(id.clone(), library.clone());
        library
    }

    fn attach(&mut self, pid: u32, shown: &str, path: &std::path::Path, points: &[(u64, u64)]) {
        let Some(scope) = NonZeroU32::new(pid).map(UProbeScope::OneProcess) else {
            return;
        };
        let mut links = Vec::new();
        let mut failed = None;
        for &(cookie, offset) in points {
            for name in [ENTRY_PROGRAM, RETURN_PROGRAM] {
                let program: &mut UProbe = match self.ebpf.program_mut(name).map(TryInto::try_into)
                {
                    Some(Ok(p)) => p,
                    _ => return,
                };
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(offset),
                    cookie: Some(cookie),
                };
                match program.attach(point, path, scope) {
                    Ok(link) => links.push((name, link)),
                    Err(err) => failed = Some(err),
                }
            }
        }
        if let Some(err) = failed {
            self.stats.inc(&self.stats.tls_attach_failed);
            warn!(pid, library = %shown, %err, "attaching TLS probes failed");
        }
        if !links.is_empty() {
            self.stats.inc(&self.stats.tls_libraries_probed);
            info!(pid, library = %shown, functions = points.len(), "probing TLS library");
        }
        self.procs.entry(pid).or_default().links.extend(links);
    }

    fn forget(&mut self, pid: u32) {
        let Some(probes) = self.procs.remove(&pid) else {
            return;
        };
        for (name, link) in probes.links {
            if let Some(Ok(program)) = self
                .ebpf
                .program_mut(name)
                .map(TryInto::<&mut UProbe>::try_into)
                && let Err(err) = program.detach(link)
            {
                debug!(pid, %err, "detaching a TLS probe");
            }
        }
    }
}
