//! Which processes the agent traces.
//!
//! Selectors come from the command line and the config file: `pid`, `exe` (glob on the
//! executable's path or name), `port` (listening on or connecting to it), `container` (id or id
//! prefix), `all`; exclusions use the same kinds (but `port` and `all`). A process is traced when
//! an include selector matches it and no exclusion does; a traced process's children are traced
//! too (the kernel adds them at fork), unless an exclusion matches the program they exec.
//!
//! The kernel evaluates what it can by itself, so untraced processes pay close to nothing:
//! traced tgids, traced cgroups (containers), selected ports, `--all` with excluded tgids.
//! [`tracker`] keeps those maps right as processes exec and exit; [`scan`] finds the processes
//! already running at start-up.

pub mod scan;
pub mod traced;
pub mod tracker;

use std::fmt;

use agent_common::select as flags;
use globset::{Glob, GlobMatcher};

pub use tracker::Tracker;

/// Why a selector is invalid.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("invalid executable glob {pattern:?}: {source}")]
    Glob {
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error("invalid container id {0:?}: expected at least 12 hexadecimal characters")]
    Container(String),
    #[error("port 0 cannot select anything")]
    Port,
    #[error(
        "nothing to trace: select processes with --pid, --exe, --port, --container or --all \
         (or a `select:` list in the config file)"
    )]
    Empty,
    #[error("{0} cannot be used as an exclusion")]
    NotExclusion(&'static str),
}

/// A glob on an executable's path or file name.
#[derive(Clone)]
pub struct ExeGlob {
    pattern: String,
    matcher: GlobMatcher,
}

impl ExeGlob {
    pub fn new(pattern: &str) -> Result<Self, SelectError> {
        let glob = Glob::new(pattern).map_err(|source| SelectError::Glob {
            pattern: pattern.to_string(),
            source,
        })?;
        Ok(Self {
            pattern: pattern.to_string(),
            matcher: glob.compile_matcher(),
        })
    }

    /// Matches the full path, or the file name alone (`python3*` selects `/usr/bin/python3.11`).
    pub fn matches(&self, path: &str) -> bool {
        if path.is_empty() {
            return false;
        }
        let name = path.rsplit('/').next().unwrap_or(path);
        self.matcher.is_match(path) || self.matcher.is_match(name)
    }
}

impl fmt::Debug for ExeGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.pattern)
    }
}

/// One way to pick processes.
#[derive(Debug, Clone)]
pub enum Selector {
    Pid(u32),
    Exe(ExeGlob),
    Port(u16),
    /// A container id or a prefix of one (at least 12 hex characters, like Docker's short ids).
    Container(String),
    All,
}

impl Selector {
    pub fn container(id: &str) -> Result<Self, SelectError> {
        let id = id
            .trim()
            .trim_start_matches("docker://")
            .trim_start_matches("containerd://")
            .trim_start_matches("cri-o://")
            .to_ascii_lowercase();
        if id.len() < 12 || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SelectError::Container(id));
        }
        Ok(Selector::Container(id))
    }

    pub fn port(port: u16) -> Result<Self, SelectError> {
        if port == 0 {
            return Err(SelectError::Port);
        }
        Ok(Selector::Port(port))
    }

    fn describe(&self) -> String {
        match self {
            Selector::Pid(p) => format!("pid {p}"),
            Selector::Exe(g) => format!("exe {:?}", g.pattern),
            Selector::Port(p) => format!("port {p}"),
            Selector::Container(c) => format!("container {c}"),
            Selector::All => "all".into(),
        }
    }
}

/// What is known about a process when selectors are applied to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub pid: u32,
    pub exe: String,
    pub container_id: Option<String>,
    /// Ports it listens on, and remote ports it is connected to (only read when a port
    /// selector needs them).
    pub ports: Vec<u16>,
}

/// Include and exclude selectors.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub include: Vec<Selector>,
    pub exclude: Vec<Selector>,
}

/// What the selectors say about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// An include selector matches and no exclusion does.
    Include,
    /// An exclusion matches.
    Exclude,
    /// Neither: the process keeps what it inherited.
    Neither,
}

fn matches(sel: &Selector, facts: &Facts) -> bool {
    match sel {
        Selector::Pid(p) => *p == facts.pid,
        Selector::Exe(g) => g.matches(&facts.exe),
        Selector::Port(p) => facts.ports.contains(p),
        Selector::Container(prefix) => facts
            .container_id
            .as_deref()
            .is_some_and(|id| id.starts_with(prefix.as_str())),
        Selector::All => true,
    }
}

impl Selection {
    /// Checks the selection makes sense: something is included, and exclusions are of kinds
    /// that can exclude.
    pub fn validate(&self) -> Result<(), SelectError> {
        if self.include.is_empty() {
            return Err(SelectError::Empty);
        }
        for e in &self.exclude {
            match e {
                Selector::All => return Err(SelectError::NotExclusion("all")),
                Selector::Port(_) => return Err(SelectError::NotExclusion("a port")),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn verdict(&self, facts: &Facts) -> Verdict {
        if self.exclude.iter().any(|s| matches(s, facts)) {
            Verdict::Exclude
        } else if self.include.iter().any(|s| matches(s, facts)) {
            Verdict::Include
        } else {
            Verdict::Neither
        }
    }

    fn any(&self, f: impl Fn(&Selector) -> bool) -> bool {
        self.include.iter().chain(&self.exclude).any(f)
    }

    pub fn all(&self) -> bool {
        self.include.iter().any(|s| matches!(s, Selector::All))
    }

    /// Ports selected in the kernel.
    pub fn ports(&self) -> Vec<u16> {
        self.include
            .iter()
            .filter_map(|s| match s {
                Selector::Port(p) => Some(*p),
                _ => None,
            })
            .collect()
    }

    pub fn wants_containers(&self) -> bool {
        self.include
            .iter()
            .any(|s| matches!(s, Selector::Container(_)))
    }

    /// Whether the container id of a process must be read to apply the selectors.
    pub fn needs_container_ids(&self) -> bool {
        self.any(|s| matches!(s, Selector::Container(_)))
    }

    /// The `agent_common::select` bits that make the kernel apply this selection.
    pub fn kernel_flags(&self, cgroups_usable: bool) -> u32 {
        let mut f = 0;
        if self.all() {
            f |= flags::ALL;
        }
        if self.wants_containers() && cgroups_usable {
            f |= flags::CGROUPS;
        }
        if !self.ports().is_empty() {
            f |= flags::PORTS;
        }
        // Executables and containers can only be matched in userspace, at each exec.
        if self.any(|s| matches!(s, Selector::Exe(_) | Selector::Container(_))) {
            f |= flags::REPORT_EXEC;
        }
        f
    }

    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        let inc: Vec<_> = self.include.iter().map(Selector::describe).collect();
        let exc: Vec<_> = self.exclude.iter().map(Selector::describe).collect();
        if exc.is_empty() {
            inc.join(", ")
        } else {
            format!("{}; excluding {}", inc.join(", "), exc.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(pid: u32, exe: &str) -> Facts {
        Facts {
            pid,
            exe: exe.into(),
            ..Facts::default()
        }
    }

    #[test]
    fn exe_glob_matches_path_or_name() {
        let g = ExeGlob::new("python3*").unwrap();
        assert!(g.matches("/usr/bin/python3.11"));
        assert!(!g.matches("/usr/bin/node"));
        assert!(!g.matches(""));
        let p = ExeGlob::new("/usr/sbin/*").unwrap();
        assert!(p.matches("/usr/sbin/nginx"));
        assert!(!p.matches("/usr/bin/nginx"));
        assert!(ExeGlob::new("[").is_err());
    }

    #[test]
    fn exclusion_wins_and_neither_keeps_inheritance() {
        let sel = Selection {
            include: vec![
                Selector::Exe(ExeGlob::new("python*").unwrap()),
                Selector::Pid(7),
            ],
            exclude: vec![Selector::Exe(ExeGlob::new("*/python3.9").unwrap())],
        };
        sel.validate().unwrap();
        assert_eq!(
            sel.verdict(&facts(1, "/usr/bin/python3.11")),
            Verdict::Include
        );
        assert_eq!(
            sel.verdict(&facts(1, "/usr/bin/python3.9")),
            Verdict::Exclude
        );
        assert_eq!(sel.verdict(&facts(7, "/bin/sh")), Verdict::Include);
        assert_eq!(sel.verdict(&facts(8, "/bin/sh")), Verdict::Neither);
    }

    #[test]
    fn containers_by_prefix_and_ports() {
        let id = "4f6a1e0b9c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f";
        let sel = Selection {
            include: vec![
                Selector::container("containerd://4F6A1E0B9C2D").unwrap(),
                Selector::port(8080).unwrap(),
            ],
            exclude: vec![],
        };
        let mut f = facts(1, "/app");
        assert_eq!(sel.verdict(&f), Verdict::Neither);
        f.container_id = Some(id.into());
        assert_eq!(sel.verdict(&f), Verdict::Include);
        let mut g = facts(2, "/app");
        g.ports = vec![5432, 8080];
        assert_eq!(sel.verdict(&g), Verdict::Include);
        assert!(Selector::container("abc").is_err());
        assert!(Selector::container("zzzzzzzzzzzzzz").is_err());
        assert!(Selector::port(0).is_err());
        assert_eq!(
            sel.kernel_flags(true),
            flags::CGROUPS | flags::PORTS | flags::REPORT_EXEC
        );
        assert_eq!(sel.kernel_flags(false), flags::PORTS | flags::REPORT_EXEC);
    }

    #[test]
    fn invalid_selections() {
        assert!(matches!(
            Selection::default().validate(),
            Err(SelectError::Empty)
        ));
        let bad = Selection {
            include: vec![Selector::All],
            exclude: vec![Selector::All],
        };
        assert!(bad.validate().is_err());
        let pids_only = Selection {
            include: vec![Selector::Pid(1)],
            exclude: vec![],
        };
        assert_eq!(
            pids_only.kernel_flags(true),
            0,
            "pids cost the kernel nothing more"
        );
    }
}
