//! Keeps the kernel's selection maps right: at start-up from a scan of `/proc`, then at every
//! process event (a traced process forked, a process exec'd, a process exited, an untraced
//! process used a selected port).

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
};

use anyhow::{Context as _, Result, bail};
use tracing::{debug, warn};

use super::{Selection, Selector, Verdict, scan};
use crate::{
    capture::{ProcessChange, ProcessEvent},
    loader::SelectMaps,
    process::cgroup,
};

/// Why a process is traced, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Selected,
    Child(u32),
    Port(u16),
}

/// A change worth telling the user about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Traced(u32, Reason),
    Untraced(u32),
    Exited(u32),
}

/// The selection, applied.
pub struct Tracker {
    selection: Selection,
    maps: SelectMaps,
    proc_root: PathBuf,
    /// Where the cgroup v2 hierarchy is mounted, when containers are selected by cgroup id.
    cgroup_v2: Option<PathBuf>,
    /// Processes known to be traced (not with `--all`, where every process is).
    traced: HashSet<u32>,
}

impl Tracker {
    /// Writes the selected ports; the caller then runs [`Tracker::scan`].
    pub fn new(
        selection: Selection,
        mut maps: SelectMaps,
        cgroup_v2: Option<PathBuf>,
    ) -> Result<Self> {
        for port in selection.ports() {
            maps.ports
                .insert(port, 1, 0)
                .with_context(|| format!("selecting port {port} in the kernel"))?;
        }
        Ok(Tracker {
            selection,
            maps,
            proc_root: PathBuf::from("/proc"),
            cgroup_v2,
            traced: HashSet::new(),
        })
    }

    /// The cgroup v2 mount to use for container selection, if the host has one where
    /// containers live (on a v1-only host, processes are selected one by one instead).
    pub fn usable_cgroup_v2() -> Option<PathBuf> {
        cgroup::v2_mount()
    }

    pub fn selection(&self) -> &Selection {
        &self.selection
    }

    /// Processes currently traced by selection (empty with `--all`).
    pub fn traced(&self) -> impl Iterator<Item = u32> + '_ {
        self.traced.iter().copied()
    }

    /// Whether `pid` is traced.
    pub fn is_traced(&self, pid: u32) -> bool {
        self.traced.contains(&pid)
    }

    /// Applies the selection to every running process; children of traced processes are
    /// traced too. Fails when a `--pid` does not exist.
    pub fn scan(&mut self) -> Result<Vec<Change>> {
        let me = std::process::id();
        for s in &self.selection.include {
            if let Selector::Pid(pid) = s {
                if *pid == me {
                    bail!("pid {pid} is the agent itself; the agent never traces itself");
                }
                if !self.proc_root.join(pid.to_string()).exists() {
                    bail!("cannot trace pid {pid}: is the process running?");
                }
            }
        }
        let with_container = self.selection.needs_container_ids();
        let mut ports = (!self.selection.ports().is_empty()).then(scan::PortIndex::default);
        let mut changes = Vec::new();
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        let mut excluded = HashSet::new();
        let mut roots = Vec::new();
        for pid in scan::pids(&self.proc_root) {
            if pid == me {
                continue;
            }
            if let Some(parent) = scan::ppid(&self.proc_root, pid) {
                children.entry(parent).or_default().push(pid);
            }
            let facts = scan::facts(&self.proc_root, pid, with_container, ports.as_mut());
            match self.selection.verdict(&facts) {
                Verdict::Include => roots.push(pid),
                Verdict::Exclude => {
                    excluded.insert(pid);
                    self.exclude(pid);
                }
                Verdict::Neither => {}
            }
        }
        // Descendants of selected processes, unless excluded themselves.
        let mut stack: Vec<(u32, Reason)> = roots.iter().map(|p| (*p, Reason::Selected)).collect();
        let mut seen = HashSet::new();
        while let Some((pid, reason)) = stack.pop() {
            if !seen.insert(pid) || excluded.contains(&pid) {
                continue;
            }
            if self.trace(pid) {
                changes.push(Change::Traced(pid, reason));
            }
            for child in children.get(&pid).into_iter().flatten() {
                stack.push((*child, Reason::Child(pid)));
            }
        }
        Ok(changes)
    }

    /// Applies a kernel process event.
    pub fn on_event(&mut self, ev: &ProcessEvent) -> Option<Change> {
        let pid = ev.tgid;
        match ev.change {
            ProcessChange::Fork { parent } => {
                // The kernel traces the child already.
                self.traced
                    .insert(pid)
                    .then_some(Change::Traced(pid, Reason::Child(parent)))
            }
            ProcessChange::Port(port) => {
                self.traced.insert(pid);
                Some(Change::Traced(pid, Reason::Port(port)))
            }
            ProcessChange::Exit => {
                self.traced.remove(&pid);
                Some(Change::Exited(pid))
            }
            ProcessChange::Exec => self.on_exec(pid, ev.cgroup_id),
            // Libraries: the TLS attacher's concern, not selection's.
            ProcessChange::MappedExec => None,
        }
    }

    /// A process runs a new program: the selectors are applied to it again.
    fn on_exec(&mut self, pid: u32, cgroup_id: u64) -> Option<Change> {
        let facts = scan::facts(
            &self.proc_root,
            pid,
            self.selection.needs_container_ids(),
            None,
        );
        match self.selection.verdict(&facts) {
            Verdict::Exclude => {
                let was = self.traced.remove(&pid) || self.selection.all();
                self.exclude(pid);
                was.then_some(Change::Untraced(pid))
            }
            Verdict::Include => {
                let _ = self.maps.excluded.remove(&pid);
                let new = self.trace(pid);
                if facts
                    .container_id
                    .as_deref()
                    .is_some_and(|id| self.selects_container(id))
                {
                    self.trace_cgroup(cgroup_id);
                }
                new.then_some(Change::Traced(pid, Reason::Selected))
            }
            Verdict::Neither => None,
        }
    }

    /// Adds a process to the traced set. Returns true when it was not traced before. With
    /// `--all` the kernel traces every process that is not excluded: nothing to add.
    fn trace(&mut self, pid: u32) -> bool {
        if self.selection.all() {
            return false;
        }
        if let Err(err) = self.maps.traced.insert(pid) {
            warn!(pid, %err, "cannot add the process to the kernel's traced set");
            return false;
        }
        if self.selection.wants_containers() {
            self.trace_container_cgroup(pid);
        }
        self.traced.insert(pid)
    }

    fn selects_container(&self, container_id: &str) -> bool {
        self.selection
            .include
            .iter()
            .any(|s| matches!(s, Selector::Container(p) if container_id.starts_with(p.as_str())))
    }

    /// Lets the kernel trace every process of a selected container's cgroup, including those it
    /// starts later. At start-up the cgroup id comes from the process's cgroup path (which a
    /// cgroup namespace makes relative: then the process is traced alone, and its children by
    /// inheritance); at exec, from the kernel itself.
    fn trace_container_cgroup(&mut self, pid: u32) {
        let Some(mount) = &self.cgroup_v2 else {
            return;
        };
        let container = cgroup::read(&self.proc_root, pid);
        if !container
            .id
            .as_deref()
            .is_some_and(|id| self.selects_container(id))
        {
            return;
        }
        let Some(path) = container
            .v2_path
            .filter(|p| p != "/" && !p.starts_with("/.."))
        else {
            return;
        };
        if let Some(id) = cgroup::v2_id(mount, &path) {
            debug!(pid, cgroup = %path, id, "tracing the container's cgroup");
            self.trace_cgroup(id);
        }
    }

    fn trace_cgroup(&mut self, id: u64) {
        if self.cgroup_v2.is_none() || id == 0 {
            return;
        }
        if let Err(err) = self.maps.cgroups.insert(id, 1, 0) {
            warn!(cgroup = id, %err, "cannot add the container's cgroup to the kernel's traced set");
        }
    }

    fn exclude(&mut self, pid: u32) {
        self.maps.traced.remove(pid);
        self.traced.remove(&pid);
        if let Err(err) = self.maps.excluded.insert(pid, 1, 0) {
            warn!(pid, %err, "cannot add the process to the kernel's excluded set (full?)");
        }
    }
}
