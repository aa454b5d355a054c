//! Separate "hosts" for the tests: a network namespace joined to this one by a veth pair, with
//! its own addresses. Made with `ip` (iproute2) and removed when dropped.

use std::process::Command;

/// A network namespace with one veth link to the root namespace.
pub struct Netns {
    pub name: String,
    /// This host's address on the link.
    pub host_ip: String,
    /// The namespace's address on the link.
    pub ns_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2) runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// Creates namespace number `n` (0..=255, distinct per concurrent use).
    pub fn new(n: u8) -> Self {
        let tag = format!("{}{n}", std::process::id() % 10_000);
        let name = format!("agt{tag}");
        let (outer, inner) = (format!("va{tag}"), format!("vb{tag}"));
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Netns {
            host_ip: format!("10.231.{n}.1"),
            ns_ip: format!("10.231.{n}.2"),
            name,
        };
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &inner, "netns", &ns.name]);
        ip(&["addr", "add", &format!("{}/24", ns.host_ip), "dev", &outer]);
        ip(&["link", "set", &outer, "up"]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{}/24", ns.ns_ip),
            "dev",
            &inner,
        ]);
        ip(&["-n", &ns.name, "link", "set", &inner, "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// A command run inside the namespace (`ip netns exec` execs it: the pid is the program's).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair too.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
