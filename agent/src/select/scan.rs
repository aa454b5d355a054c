//! What `/proc` says about running processes: their executables, containers, parents, and the
//! TCP ports they listen on or are connected to. Used at start-up (processes that already run)
//! and at each exec.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use super::Facts;
use crate::process::{self, cgroup};

/// Every process id under `proc_root`.
pub fn pids(proc_root: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The parent of a process, from `/proc/PID/stat` (the field after the command, which may
/// itself contain spaces and parentheses).
pub fn ppid(proc_root: &Path, pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// TCP sockets of one network namespace: inode → ports that select their owner.
type Sockets = HashMap<u64, Vec<u16>>;

/// Parses `/proc/PID/net/tcp` or `tcp6`: listening sockets select by local port, established
/// ones by both ports (an accepted connection's local port is the one listened on; a connected
/// one's remote port is the one connected to).
pub fn parse_tcp_table(text: &str, out: &mut Sockets) {
    let port =
        |addr: &str| -> Option<u16> { u16::from_str_radix(addr.rsplit(':').next()?, 16).ok() };
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let (Some(local), Some(remote), Ok(inode)) = (port(f[1]), port(f[2]), f[9].parse::<u64>())
        else {
            continue;
        };
        if inode == 0 {
            continue;
        }
        let ports = match f[3] {
            "0A" => vec![local],
            "01" => vec![local, remote],
            _ => continue,
        };
        out.insert(inode, ports);
    }
}

/// Ports of processes, read lazily per network namespace.
#[derive(Debug, Default)]
pub struct PortIndex {
    by_netns: HashMap<PathBuf, Sockets>,
}

impl PortIndex {
    /// Ports a process listens on or is connected to.
    pub fn ports_of(&mut self, proc_root: &Path, pid: u32) -> Vec<u16> {
        let dir = proc_root.join(pid.to_string());
        let Ok(netns) = std::fs::read_link(dir.join("ns/net")) else {
            return Vec::new();
        };
        let sockets = self.by_netns.entry(netns).or_insert_with(|| {
            let mut s = Sockets::new();
            for table in ["net/tcp", "net/tcp6"] {
                if let Ok(text) = std::fs::read_to_string(dir.join(table)) {
                    parse_tcp_table(&text, &mut s);
                }
            }
            s
        });
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            return Vec::new();
        };
        let mut ports: Vec<u16> = fds
            .filter_map(|fd| {
                let target = std::fs::read_link(fd.ok()?.path()).ok()?;
                let inode = target
                    .to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()?;
                sockets.get(&inode).cloned()
            })
            .flatten()
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

/// Reads what the selectors need about a process: always its executable; its container id and
/// ports only when asked.
pub fn facts(
    proc_root: &Path,
    pid: u32,
    with_container: bool,
    ports: Option<&mut PortIndex>,
) -> Facts {
    Facts {
        pid,
        exe: process::exe_path(proc_root, pid),
        container_id: with_container
            .then(|| cgroup::read(proc_root, pid).id)
            .flatten(),
        ports: ports
            .map(|p| p.ports_of(proc_root, pid))
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_tables() {
        let text = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0 100 0 0 10 0
   1: 0100007F:9C40 0100007F:1538 01 00000000:00000000 00:00000000 00000000     0        0 2222 1 0 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:9C41 06 00000000:00000000 00:00000000 00000000     0        0 0 1 0 20 4 30 10 -1
   3: garbage
";
        let mut s = Sockets::new();
        parse_tcp_table(text, &mut s);
        assert_eq!(s.get(&1111), Some(&vec![8080]));
        assert_eq!(s.get(&2222), Some(&vec![40000, 5432]));
        assert_eq!(s.len(), 2, "time-wait and garbage lines are skipped");
        let v6 = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3333 1 0 100 0 0 10 0
";
        parse_tcp_table(v6, &mut s);
        assert_eq!(s.get(&3333), Some(&vec![8081]));
    }

    #[test]
    fn this_process_and_its_listener() {
        let me = std::process::id();
        let proc_root = Path::new("/proc");
        assert!(pids(proc_root).contains(&me));
        assert_eq!(
            ppid(proc_root, me),
            Some(std::os::unix::process::parent_id())
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut index = PortIndex::default();
        let f = facts(proc_root, me, true, Some(&mut index));
        assert!(f.ports.contains(&port), "{:?} lacks {port}", f.ports);
        assert!(!f.exe.is_empty());
    }
}
