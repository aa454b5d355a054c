//! Reading executables and shared libraries of traced processes: which runtime built them
//! (sections) and where functions live (symbols). Files are memory-mapped, so looking at a large
//! binary (Node.js is ~100 MB) touches only the pages of its headers and symbol tables.

use std::{fs::File, path::Path};

use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

/// Why a file could not be read as ELF.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an ELF file the agent can read: {source}")]
    Parse {
        path: String,
        #[source]
        source: object::Error,
    },
}

/// A memory-mapped ELF file.
pub struct Elf {
    map: memmap2::Mmap,
    path: String,
}

impl Elf {
    /// Maps the file read-only.
    pub fn open(path: &Path) -> Result<Self, ElfError> {
        let path_s = path.display().to_string();
        let file = File::open(path).map_err(|source| ElfError::Open {
            path: path_s.clone(),
            source,
        })?;
        // SAFETY: the mapping is read-only and private; a file changed underneath could only
        // make parsing fail, which object reports as an error rather than undefined behaviour
        // for the structures it checks.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| ElfError::Open {
            path: path_s.clone(),
            source,
        })?;
        let elf = Elf { map, path: path_s };
        elf.parse()?;
        Ok(elf)
    }

    fn parse(&self) -> Result<object::File<'_>, ElfError> {
        object::File::parse(&*self.map).map_err(|source| ElfError::Parse {
            path: self.path.clone(),
            source,
        })
    }

    /// True when the file has a section of this name.
    pub fn has_section(&self, name: &str) -> bool {
        self.parse()
            .map(|f| f.section_by_name(name).is_some())
            .unwrap_or(false)
    }

    /// File offsets of the functions `names` (in that order), for uprobes: looked up in the
    /// dynamic symbol table, then in the full symbol table (statically linked libraries in
    /// unstripped executables). `None` for a name defined in neither.
    pub fn function_offsets(&self, names: &[&str]) -> Vec<Option<u64>> {
        let Ok(f) = self.parse() else {
            return vec![None; names.len()];
        };
        let mut out: Vec<Option<u64>> = vec![None; names.len()];
        let fill = |out: &mut Vec<Option<u64>>,
                    symbols: &mut dyn Iterator<Item = object::Symbol<'_, '_>>| {
            for s in symbols {
                if !s.is_definition() || s.kind() != object::SymbolKind::Text {
                    continue;
                }
                let Ok(name) = s.name() else { continue };
                // Versioned names (`SSL_read@@OPENSSL_3.0.0`) appear in some tables.
                let name = name.split('@').next().unwrap_or(name);
                if let Some(i) = names.iter().position(|n| *n == name)
                    && out[i].is_none()
                {
                    out[i] = file_offset(&f, s.address());
                }
            }
        };
        fill(&mut out, &mut f.dynamic_symbols());
        if out.iter().any(Option::is_none) {
            fill(&mut out, &mut f.symbols());
        }
        out
    }

    /// True when the dynamic symbol table defines `name`.
    pub fn defines_dynamic_symbol(&self, name: &str) -> bool {
        self.parse()
            .map(|f| {
                f.dynamic_symbols()
                    .any(|s| s.is_definition() && s.name() == Ok(name))
            })
            .unwrap_or(false)
    }
}

/// Where the instruction at virtual address `addr` is in the file: through the loadable
/// segment that contains it, as the kernel maps it.
fn file_offset(f: &object::File<'_>, addr: u64) -> Option<u64> {
    f.segments().find_map(|seg| {
        let (start, size) = (seg.address(), seg.size());
        let (file_start, file_size) = seg.file_range();
        (addr >= start && addr < start + size.min(file_size)).then(|| addr - start + file_start)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_executable() {
        let exe = std::env::current_exe().unwrap();
        let elf = Elf::open(&exe).unwrap();
        assert!(elf.has_section(".text"));
        assert!(!elf.has_section(".go.buildinfo"));
    }

    #[test]
    fn function_offsets_match_the_system_libc() {
        // The offset of a libc function is where its first bytes are in the file: compare
        // the file's bytes there with the loaded function's own code in this process.
        let libc_path = std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.contains("libc.so"))
            .map(str::to_string)
            .expect("libc is mapped");
        let elf = Elf::open(Path::new(&libc_path)).unwrap();
        let offs = elf.function_offsets(&["getpid", "no_such_function_here"]);
        assert!(offs[1].is_none());
        let off = offs[0].expect("getpid is defined") as usize;
        let file = std::fs::read(&libc_path).unwrap();
        let live = libc::getpid as unsafe extern "C" fn() -> libc::pid_t as *const u8;
        // SAFETY: reading 16 bytes of mapped, executable libc code.
        let code = unsafe { std::slice::from_raw_parts(live, 16) };
        assert_eq!(&file[off..off + 16], code);
    }

    #[test]
    fn non_elf_is_an_error() {
        let path = std::env::temp_dir().join(format!("agent-not-elf-{}", std::process::id()));
        std::fs::write(&path, b"#!/bin/sh\necho hi\n").unwrap();
        assert!(matches!(Elf::open(&path), Err(ElfError::Parse { .. })));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            Elf::open(Path::new("/nonexistent/x")),
            Err(ElfError::Open { .. })
        ));
    }
}
