//! Fake containers for the tests: a cgroup v2 directory named the way container runtimes name
//! them (`docker-<id>.scope`, or a Kubernetes pod's `cri-containerd-<id>.scope`), into which a
//! command moves itself before exec'ing the program. The agent sees exactly what it sees for a
//! real container: the cgroup path in `/proc/PID/cgroup` and the cgroup id in the kernel.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

/// A cgroup v2 directory removed when dropped (once its processes are gone).
pub struct FakeContainer {
    pub id: String,
    root: PathBuf,
    pub dir: PathBuf,
}

/// Where cgroup v2 is mounted.
fn v2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .expect("a cgroup v2 hierarchy is mounted")
}

/// A 64-hex container id made from a seed and this test process's pid.
pub fn container_id(seed: u32) -> String {
    format!(
        "{:08x}{:056x}",
        std::process::id(),
        0x5eed_0000u64 + u64::from(seed)
    )
}

impl FakeContainer {
    /// A Docker container: `/<unique>/docker-<id>.scope`.
    pub fn docker(seed: u32) -> Self {
        let id = container_id(seed);
        Self::at(id.clone(), &format!("docker-{id}.scope"))
    }

    /// A Kubernetes pod's container under containerd with the systemd driver.
    pub fn kubernetes(seed: u32, pod_uid: &str) -> Self {
        let id = container_id(seed);
        let rel = format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope",
            pod_uid.replace('-', "_")
        );
        Self::at(id, &rel)
    }

    fn at(id: String, rel: &str) -> Self {
        let root = v2_mount().join(format!("agt{}-{}", std::process::id(), &id[56..]));
        let dir = root.join(rel);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        FakeContainer { id, root, dir }
    }

    /// `program args...` started inside the container.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec \"$@\"",
                self.dir.display()
            ))
            .arg("sh")
            .arg(program);
        c
    }
}

impl Drop for FakeContainer {
    fn drop(&mut self) {
        // Directories go bottom-up, once the killed processes have left them.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut dirs: Vec<PathBuf> = self.dir.ancestors().map(PathBuf::from).collect();
        dirs.retain(|d| d.starts_with(&self.root));
        for d in dirs {
            while std::fs::remove_dir(&d).is_err() && d.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
