//! Which files a process maps are TLS libraries with the functions the probes need.
//!
//! Candidates are the files mapped executable in `/proc/PID/maps`; a file is a TLS library when
//! its symbols define both `SSL_read` and `SSL_write` (OpenSSL 1.1 and 3, BoringSSL, LibreSSL
//! share these signatures). The `_ex` forms (OpenSSL ≥ 1.1.1) and `SSL_do_handshake` are
//! probed when present. A file named like `libssl` without those symbols (stripped) is reported
//! as unsupported rather than silently skipped.

use std::{collections::HashSet, path::Path};

use agent_common::tls_fn;

use crate::elf::{Elf, ElfError};

/// The functions probed, with the cookie that tells the kernel program which one fired.
pub const FUNCTIONS: &[(&str, u64)] = &[
    ("SSL_read", tls_fn::READ),
    ("SSL_write", tls_fn::WRITE),
    ("SSL_read_ex", tls_fn::READ_EX),
    ("SSL_write_ex", tls_fn::WRITE_EX),
    ("SSL_do_handshake", tls_fn::HANDSHAKE),
];

/// A file identity that survives renames and differing mount namespaces: device and inode.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: String,
    pub inode: u64,
}

/// A file a process maps executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub id: FileId,
    /// Its path inside the process's mount namespace.
    pub path: String,
}

/// The distinct files mapped executable in a `/proc/PID/maps` text.
pub fn executable_files(maps: &str) -> Vec<Mapped> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path
        let mut fields = line.split_ascii_whitespace();
        let (Some(_), Some(perms), Some(_), Some(dev), Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let path = fields.collect::<Vec<_>>().join(" ");
        let Ok(inode) = inode.parse::<u64>() else {
            continue;
        };
        if !perms.contains('x')
            || inode == 0
            || !path.starts_with('/')
            || path.ends_with("(deleted)")
        {
            continue;
        }
        let id = FileId {
            dev: dev.to_string(),
            inode,
        };
        if seen.insert(id.clone()) {
            out.push(Mapped { id, path });
        }
    }
    out
}

/// What a mapped file offers the TLS probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Library {
    /// A TLS library: (cookie, file offset) of each function found.
    Tls(Vec<(u64, u64)>),
    /// Not a TLS library.
    Other,
    /// Looks like a TLS library but cannot be probed, and why.
    Unsupported(&'static str),
}

/// Reads the file's symbols.
pub fn inspect(file: &Path) -> Result<Library, ElfError> {
    let elf = Elf::open(file)?;
    let names: Vec<&str> = FUNCTIONS.iter().map(|(n, _)| *n).collect();
    let offsets = elf.function_offsets(&names);
    let found: Vec<(u64, u64)> = FUNCTIONS
        .iter()
        .zip(&offsets)
        .filter_map(|((_, cookie), off)| off.map(|o| (*cookie, o)))
        .collect();
    let has = |cookie: u64| found.iter().any(|(c, _)| *c == cookie);
    if has(tls_fn::READ) && has(tls_fn::WRITE) {
        return Ok(Library::Tls(found));
    }
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with("libssl") || name.starts_with("libboringssl") {
        return Ok(Library::Unsupported(
            "no SSL_read/SSL_write symbols (stripped, or not OpenSSL-compatible)",
        ));
    }
    Ok(Library::Other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_mappings_once_each() {
        let maps = "\
55d0c0a00000-55d0c0a2e000 r--p 00000000 fd:01 1311 /usr/bin/python3.11
55d0c0a2e000-55d0c0d0b000 r-xp 0002e000 fd:01 1311 /usr/bin/python3.11
7f1b2a000000-7f1b2a021000 rw-p 00000000 00:00 0
7f1b2b000000-7f1b2b05f000 r-xp 00022000 fd:01 2222 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1b2c000000-7f1b2c001000 r-xp 00000000 fd:01 3333 /tmp/gone.so (deleted)
7f1b2d000000-7f1b2d001000 r-xp 00000000 fd:01 4444 /opt/my app/lib.so
7ffd5a1f0000-7ffd5a1f2000 r-xp 00000000 00:00 0                          [vdso]
garbage line
";
        let files = executable_files(maps);
        let paths: Vec<&str> = files.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/usr/bin/python3.11",
                "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                "/opt/my app/lib.so"
            ]
        );
        assert_eq!(
            files[1].id,
            FileId {
                dev: "fd:01".into(),
                inode: 2222
            }
        );
    }

    #[test]
    fn the_system_libssl_is_a_tls_library() {
        let Some(libssl) = [
            "/usr/lib/x86_64-linux-gnu/libssl.so.3",
            "/lib/x86_64-linux-gnu/libssl.so.3",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists()) else {
            panic!("libssl3 is installed on every machine the agent is built on");
        };
        let Library::Tls(points) = inspect(Path::new(libssl)).unwrap() else {
            panic!("libssl not recognised");
        };
        let cookies: Vec<u64> = points.iter().map(|(c, _)| *c).collect();
        assert_eq!(cookies, [1, 2, 3, 4, 5], "OpenSSL 3 has all five functions");
        // The agent itself uses no OpenSSL.
        let exe = std::env::current_exe().unwrap();
        assert_eq!(inspect(&exe).unwrap(), Library::Other);
    }

    #[test]
    fn a_libssl_without_the_symbols_is_reported() {
        // Any ELF library without SSL_read, named like libssl (as a stripped one would look).
        let libc = std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.contains("libc.so"))
            .map(str::to_string)
            .expect("libc is mapped");
        let dir = std::env::temp_dir().join(format!("agent-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("libssl.so.9");
        std::fs::copy(&libc, &fake).unwrap();
        let got = inspect(&fake).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(got, Library::Unsupported(_)), "{got:?}");
        assert!(inspect(Path::new("/nonexistent/libssl.so.3")).is_err());
    }
}
