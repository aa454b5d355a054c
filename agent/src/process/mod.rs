//! What the agent knows about a traced process: its service name ([`naming`]), the resource
//! attributes its spans carry (its own `OTEL_RESOURCE_ATTRIBUTES`, its container from
//! [`cgroup`], its pod from [`crate::k8s`]), and the runtime that runs it ([`runtime`]). Read from
//! `/proc` once per process and cached (bounded); looked at again after an exec, or when the
//! Kubernetes store learns of the process's pod.

pub mod cgroup;
pub mod naming;
pub mod runtime;

use foldhash::{HashMap, HashMapExt as _};
use std::{path::Path, sync::Arc};

pub use naming::NameSource;
pub use runtime::Runtime;

use smol_str::SmolStr;

use crate::k8s;

/// Resource attributes of one traced process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// A `SmolStr`: every span's metrics take a copy, which for a name longer than a `SmolStr`
    /// holds inline is a reference count rather than an allocation.
    pub service_name: SmolStr,
    pub name_source: NameSource,
    pub executable_name: String,
    pub executable_path: String,
    pub command_line: String,
    pub host_name: String,
    pub runtime: Runtime,
    /// `container.id`, from the process's cgroup.
    pub container_id: Option<String>,
    /// Further resource attributes: the rest of the process's `OTEL_RESOURCE_ATTRIBUTES`, and
    /// `k8s.*` when its pod is known.
    pub attributes: Vec<(String, String)>,
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

/// Whether a process with this pid is alive (its `/proc` entry exists).
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// This machine's host name.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// The executable path of a process (`/proc/PID/exe`), without a ` (deleted)` suffix.
pub fn exe_path(proc_root: &Path, pid: u32) -> String {
    std::fs::read_link(proc_root.join(pid.to_string()).join("exe"))
        .map(|p| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string()
        })
        .unwrap_or_default()
}

/// Reads a process's identity from `proc_root/PID` (normally `/proc`), with its pod from
/// `pods` when known.
pub fn read(
    proc_root: &Path,
    pid: u32,
    host_name: &str,
    pods: Option<&k8s::Store>,
) -> Result<ProcessInfo, ProcessError> {
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
    let executable_path = exe_path(proc_root, pid);
    let comm = std::fs::read_to_string(dir.join("comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default();
    let executable_name = Path::new(&executable_path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or(comm);
    let environ = std::fs::read(dir.join("environ")).unwrap_or_default();
    let mut attributes = env_value(&environ, "OTEL_RESOURCE_ATTRIBUTES")
        .map(naming::resource_attributes)
        .unwrap_or_default();
    let resource_service_name = attributes
        .iter()
        .position(|(k, _)| k == "service.name")
        .map(|i| attributes.remove(i).1);
    let container = cgroup::read(proc_root, pid);
    let pod = pods.and_then(|s| s.lookup(container.id.as_deref(), container.pod_uid.as_deref()));
    let (service_name, name_source) = naming::service_name(naming::Candidates {
        otel_service_name: env_value(&environ, "OTEL_SERVICE_NAME"),
        resource_service_name: resource_service_name.as_deref(),
        k8s_app_label: pod.as_ref().and_then(|p| p.app_label.as_deref()),
        k8s_workload: pod
            .as_ref()
            .and_then(|p| p.workload())
            .map(|(_, name)| name.as_str()),
        executable: &executable_name,
    });
    if let Some(pod) = &pod {
        // The process's own attributes win over what the agent derives.
        for (k, v) in pod.attributes(container.id.as_deref()) {
            if !attributes.iter().any(|(ak, _)| *ak == k) {
                attributes.push((k, v));
            }
        }
    }
    Ok(ProcessInfo {
        pid,
        service_name: service_name.into(),
        name_source,
        executable_name,
        executable_path,
        command_line,
        host_name: host_name.to_string(),
        runtime: runtime::detect(&dir),
        container_id: container.id,
        attributes,
    })
}

/// A cached identity and what it was built from.
#[derive(Debug)]
struct Entry {
    info: Arc<ProcessInfo>,
    /// The pod store's generation when the entry was made.
    pods_generation: u64,
}

/// Cache of process identities, bounded to `capacity` entries.
#[derive(Debug)]
pub struct Processes {
    cache: HashMap<u32, Entry>,
    capacity: usize,
    host_name: String,
    pods: Option<k8s::Store>,
}

impl Processes {
    pub fn new(capacity: usize) -> Self {
        Self::with_pods(capacity, None)
    }

    pub fn with_pods(capacity: usize, pods: Option<k8s::Store>) -> Self {
        Self {
            cache: HashMap::new(),
            capacity,
            host_name: host_name(),
            pods,
        }
    }

    /// The identity of `pid`, read on first use. A process gone before it could be read still
    /// gets a minimal identity (`pid-N`) so its spans are not lost.
    pub fn get(&mut self, pid: u32) -> Arc<ProcessInfo> {
        self.get_named(pid, "")
    }

    /// Like [`Processes::get`], with the process's `comm` from its last kernel record to name
    /// it by should it be gone from `/proc` already: a command-line client lives a few
    /// milliseconds, and the record that made it traced may be read after it exited.
    pub fn get_named(&mut self, pid: u32, comm: &str) -> Arc<ProcessInfo> {
        let generation = self.pods.as_ref().map_or(0, k8s::Store::generation);
        if let Some(e) = self.cache.get(&pid) {
            // A containerised process without its pod yet is looked at again once the pod
            // store has changed.
            let stale = e.pods_generation != generation
                && e.info.container_id.is_some()
                && !e.info.attributes.iter().any(|(k, _)| k == "k8s.pod.name");
            if !stale {
                return e.info.clone();
            }
        }
        let info = read(Path::new("/proc"), pid, &self.host_name, self.pods.as_ref())
            .unwrap_or_else(|err| {
                tracing::debug!(%err, pid, "process identity unavailable");
                ProcessInfo {
                    pid,
                    service_name: if comm.is_empty() {
                        smol_str::format_smolstr!("pid-{pid}")
                    } else {
                        comm.into()
                    },
                    name_source: NameSource::Executable,
                    executable_name: comm.to_string(),
                    executable_path: String::new(),
                    command_line: String::new(),
                    host_name: self.host_name.clone(),
                    runtime: Runtime::Native,
                    container_id: None,
                    attributes: Vec::new(),
                }
            });
        let info = Arc::new(info);
        self.store(pid, info.clone(), generation);
        info
    }

    /// Caches an identity, within the bound.
    fn store(&mut self, pid: u32, info: Arc<ProcessInfo>, pods_generation: u64) {
        if self.cache.len() >= self.capacity && !self.cache.contains_key(&pid) {
            // Entries are cheap to read again; dropping them all keeps the bound simple.
            self.cache.clear();
        }
        self.cache.insert(
            pid,
            Entry {
                info,
                pods_generation,
            },
        );
    }

    /// Gives a forked child its parent's identity. Until it execs (which makes it forget
    /// this), a child runs the same program with the same environment and cgroup; and a
    /// child that serves one request and exits at once (a per-request forking server) is often
    /// gone from `/proc` before its first span is made.
    pub fn inherit(&mut self, child: u32, parent: u32) {
        let from = self.get(parent);
        if from.executable_path.is_empty() && from.command_line.is_empty() {
            // The parent could not be read either: the child is read on its own.
            return;
        }
        let info = Arc::new(ProcessInfo {
            pid: child,
            ..(*from).clone()
        });
        let pods_generation = self.cache.get(&parent).map_or(0, |e| e.pods_generation);
        self.store(child, info, pods_generation);
    }

    /// Forgets a process (it exec'd another program, or exited).
    pub fn forget(&mut self, pid: u32) {
        self.cache.remove(&pid);
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
        let info = read(Path::new("/proc"), me, "h", None).unwrap();
        assert_eq!(info.pid, me);
        assert!(!info.executable_name.is_empty());
        assert_eq!(info.runtime, Runtime::Native);
        assert_eq!(info.name_source, NameSource::Executable);
    }

    /// A child gone before its first span keeps its parent's name; an unreadable parent
    /// leaves the child to be read on its own.
    #[test]
    fn forked_child_inherits_the_parents_identity() {
        let me = std::process::id();
        let gone = u32::MAX - 7;
        let mut processes = Processes::new(16);
        processes.inherit(gone, me);
        let child = processes.get(gone);
        let parent = processes.get(me);
        assert_eq!(child.pid, gone);
        assert_eq!(child.service_name, parent.service_name);
        assert_eq!(child.executable_path, parent.executable_path);
        processes.forget(gone);
        assert_eq!(processes.get(gone).service_name, format!("pid-{gone}"));
        processes.forget(gone);
        let named = processes.get_named(gone, "psql");
        assert_eq!(
            (named.service_name.as_str(), named.executable_name.as_str()),
            ("psql", "psql")
        );
        assert_eq!(processes.get(gone), named, "cached under its name");
        processes.inherit(gone - 1, gone - 2);
        assert_eq!(
            processes.get(gone - 1).service_name,
            format!("pid-{}", gone - 1)
        );
    }

    /// A fake `/proc/77` whose environment, cgroup and pod give each naming source in turn.
    #[test]
    fn fake_proc_tree_naming_order() {
        let root = std::env::temp_dir().join(format!("agent-proc-{}", std::process::id()));
        let dir = root.join("77");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cmdline"), b"python3\0app.py\0--port\08000\0").unwrap();
        std::fs::write(dir.join("comm"), b"python3\n").unwrap();
        let id = "4f6a1e0b9c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f";
        std::fs::write(
            dir.join("cgroup"),
            format!("0::/system.slice/docker-{id}.scope\n"),
        )
        .unwrap();
        let pods = k8s::Store::default();
        let env = |e: &str| std::fs::write(dir.join("environ"), e.replace(';', "\0")).unwrap();

        env("A=b;OTEL_SERVICE_NAME=orders;OTEL_RESOURCE_ATTRIBUTES=service.name=x,team=pay");
        let info = read(&root, 77, "h", Some(&pods)).unwrap();
        assert_eq!(info.service_name, "orders");
        assert_eq!(info.name_source, NameSource::OtelServiceName);
        assert_eq!(
            info.attributes,
            vec![("team".to_string(), "pay".to_string())]
        );
        assert_eq!(info.container_id.as_deref(), Some(id));
        assert_eq!(info.command_line, "python3 app.py --port 8000");

        env("OTEL_RESOURCE_ATTRIBUTES=service.name=from-attrs");
        let info = read(&root, 77, "h", Some(&pods)).unwrap();
        assert_eq!(info.service_name, "from-attrs");
        assert_eq!(info.name_source, NameSource::ResourceAttributes);

        env("A=b");
        assert_eq!(
            read(&root, 77, "h", Some(&pods)).unwrap().service_name,
            "python3"
        );

        let mut pod = pod_with(id);
        pod.top_owner = Some((k8s::Workload::Deployment, "checkout".into()));
        pods.upsert(pod.clone());
        let info = read(&root, 77, "h", Some(&pods)).unwrap();
        assert_eq!(info.service_name, "checkout");
        assert_eq!(info.name_source, NameSource::KubernetesWorkload);
        assert!(
            info.attributes
                .contains(&("k8s.namespace.name".into(), "shop".into()))
        );
        assert!(
            info.attributes
                .contains(&("k8s.deployment.name".into(), "checkout".into()))
        );

        pod.app_label = Some("checkout-web".into());
        pods.upsert(pod);
        let info = read(&root, 77, "h", Some(&pods)).unwrap();
        assert_eq!(info.service_name, "checkout-web");
        assert_eq!(info.name_source, NameSource::KubernetesLabel);

        assert!(matches!(
            read(&root, 78, "h", None),
            Err(ProcessError::NotFound(78))
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn pod_with(container: &str) -> k8s::PodMeta {
        k8s::PodMeta {
            name: "checkout-7d9f8b-x2x4q".into(),
            namespace: "shop".into(),
            uid: "8e3c5a1d-2f4b-4c6d-9e8f-0a1b2c3d4e5f".into(),
            node: "node-1".into(),
            app_label: None,
            owner: Some((k8s::Workload::ReplicaSet, "checkout-7d9f8b".into())),
            top_owner: None,
            containers: vec![(container.to_string(), "app".into())],
        }
    }
}
