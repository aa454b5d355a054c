//! Container identity from `/proc/PID/cgroup`: the container id (`container.id`) and, under
//! Kubernetes, the pod uid, for the layouts of containerd, CRI-O, Docker and Podman with the
//! systemd and cgroupfs drivers, on cgroup v1 and v2.

/// What a process's cgroups say about its container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Container {
    /// 64 lowercase hex characters.
    pub id: Option<String>,
    /// The Kubernetes pod uid (dashed form), when the path names a pod.
    pub pod_uid: Option<String>,
    /// The cgroup v2 path (`0::/...`), used to find the cgroup id the kernel sees.
    pub v2_path: Option<String>,
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A container id inside one path component: `docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope`, or a bare id (cgroupfs driver). Conmon's own cgroup
/// (`crio-conmon-<id>.scope`) is not the container.
fn id_in(component: &str) -> Option<String> {
    let c = component.strip_suffix(".scope").unwrap_or(component);
    if c.contains("conmon") {
        return None;
    }
    let candidate = c.rsplit('-').next().unwrap_or(c);
    is_id(candidate).then(|| candidate.to_ascii_lowercase())
}

/// A pod uid in a component: `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid_with_underscores>.slice`.
fn pod_in(component: &str) -> Option<String> {
    let c = component.strip_suffix(".slice").unwrap_or(component);
    let at = c.rfind("pod")?;
    let uid = c[at + 3..].replace('_', "-");
    (uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
}

/// Parses the content of `/proc/PID/cgroup`.
pub fn parse(text: &str) -> Container {
    let mut out = Container::default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(hier), Some(_), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if hier == "0" {
            out.v2_path = Some(path.to_string());
        }
        for component in path.split('/').rev() {
            if out.id.is_none()
                && let Some(id) = id_in(component)
            {
                out.id = Some(id);
            }
            if out.pod_uid.is_none()
                && let Some(uid) = pod_in(component)
            {
                out.pod_uid = Some(uid);
            }
        }
    }
    out
}

/// Reads `/proc/PID/cgroup` under `proc_root`.
pub fn read(proc_root: &std::path::Path, pid: u32) -> Container {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))
        .map(|t| parse(&t))
        .unwrap_or_default()
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on pure v2 hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones), from `/proc/self/mountinfo`.
pub fn v2_mount() -> Option<std::path::PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(std::path::PathBuf::from))?
    })
}

/// The id the kernel gives a cgroup v2 (`bpf_get_current_cgroup_id`): its directory's inode.
pub fn v2_id(mount: &std::path::Path, path: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let dir = mount.join(path.trim_start_matches('/'));
    std::fs::metadata(dir).ok().map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f6a1e0b9c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f";
    const UID: &str = "8e3c5a1d-2f4b-4c6d-9e8f-0a1b2c3d4e5f";

    #[test]
    fn containerd_systemd_driver_v2() {
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope\n",
            UID.replace('-', "_")
        );
        let c = parse(&text);
        assert_eq!(c.id.as_deref(), Some(ID));
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
        assert!(c.v2_path.unwrap().ends_with(".scope"));
    }

    #[test]
    fn containerd_cgroupfs_driver_v1() {
        let text = format!(
            "12:memory:/kubepods/besteffort/pod{UID}/{ID}\n11:cpu,cpuacct:/kubepods/besteffort/pod{UID}/{ID}\n0::/\n"
        );
        let c = parse(&text);
        assert_eq!(c.id.as_deref(), Some(ID));
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
        assert_eq!(c.v2_path.as_deref(), Some("/"));
    }

    #[test]
    fn crio_docker_and_podman() {
        let crio = format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(parse(&crio).id.as_deref(), Some(ID));
        let conmon = format!("0::/machine.slice/crio-conmon-{ID}.scope");
        assert_eq!(parse(&conmon).id, None, "conmon is not the container");
        let docker_v2 = format!("0::/system.slice/docker-{ID}.scope");
        assert_eq!(parse(&docker_v2).id.as_deref(), Some(ID));
        let docker_v1 = format!("4:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}");
        assert_eq!(parse(&docker_v1).id.as_deref(), Some(ID));
        let podman = format!(
            "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
        );
        assert_eq!(parse(&podman).id.as_deref(), Some(ID));
        assert_eq!(parse(&podman).pod_uid, None);
    }

    #[test]
    fn host_processes_and_garbage() {
        let host = "0::/user.slice/user-0.slice/session-1.scope\n";
        assert_eq!(parse(host).id, None);
        assert_eq!(parse("garbage\n::\n").id, None);
        assert_eq!(parse(""), Container::default());
        // A 64-character component that is not hex is not an id.
        let fake = format!("0::/{}", "z".repeat(64));
        assert_eq!(parse(&fake).id, None);
    }
}
