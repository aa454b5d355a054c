//! Reading executables and shared libraries of traced processes: which runtime built them
//! (sections) and where functions live (symbols). Files are memory-mapped, so looking at a large
//! binary (Node.js is ~100 MB) touches only the pages of its headers and symbol tables.

use std::{fs::File, path::Path};

use object::{Object as _, ObjectSymbol as _};

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
