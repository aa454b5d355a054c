//! Kernel struct offsets read from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF programs have no CO-RE relocations, so the fields the kernel programs walk
//! (`task_struct.files`, `sock.__sk_common.skc_num`, ...) are located here at start-up and passed
//! to the programs as a read-only global. Anonymous structs and unions are searched through, as
//! the kernel nests many socket fields inside them.

use std::path::Path;

use agent_common::{KernelOffsets, OFFSET_UNKNOWN};
use btf_rs::{Btf, Type};

/// Why offsets could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read BTF from {path}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)")]
    Read {
        path: String,
        #[source]
        source: btf_rs::Error,
    },
    #[error("struct {0} not found in the kernel's BTF")]
    NoStruct(String),
    #[error("member {member} not found in struct {strukt}")]
    NoMember { strukt: String, member: String },
    #[error("member {member} of struct {strukt} is a bitfield")]
    Bitfield { strukt: String, member: String },
    #[error(
        "syscall argument registers are not known on {0}: the agent supports x86_64 and aarch64"
    )]
    Arch(&'static str),
    #[error("BTF lookup failed: {0}")]
    Lookup(#[from] btf_rs::Error),
}

/// The default location of the running kernel's BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Reads every offset the kernel programs need.
pub fn kernel_offsets(path: &Path) -> Result<KernelOffsets, BtfError> {
    let btf = Btf::from_file(path).map_err(|source| BtfError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let f = Finder { btf: &btf };
    Ok(KernelOffsets {
        task_files: f.offset("task_struct", "files")?,
        files_fdt: f.offset("files_struct", "fdt")?,
        fdt_max_fds: f.offset("fdtable", "max_fds")?,
        fdt_fd: f.offset("fdtable", "fd")?,
        file_private_data: f.offset("file", "private_data")?,
        file_inode: f.offset("file", "f_inode")?,
        inode_mode: f.offset("inode", "i_mode")?,
        socket_type: f.offset("socket", "type")?,
        socket_sk: f.offset("socket", "sk")?,
        sk_family: f.offset("sock", "__sk_common.skc_family")?,
        // A bitfield before Linux 5.6; the kernel programs then rely on type and family alone.
        sk_protocol: match f.offset("sock", "sk_protocol") {
            Ok(off) => off,
            Err(BtfError::Bitfield { .. }) => OFFSET_UNKNOWN,
            Err(e) => return Err(e),
        },
        sk_rcv_saddr: f.offset("sock", "__sk_common.skc_rcv_saddr")?,
        sk_daddr: f.offset("sock", "__sk_common.skc_daddr")?,
        sk_v6_rcv_saddr: f.offset("sock", "__sk_common.skc_v6_rcv_saddr")?,
        sk_v6_daddr: f.offset("sock", "__sk_common.skc_v6_daddr")?,
        sk_num: f.offset("sock", "__sk_common.skc_num")?,
        sk_dport: f.offset("sock", "__sk_common.skc_dport")?,
        task_pid: f.offset("task_struct", "pid")?,
        task_tgid: f.offset("task_struct", "tgid")?,
        task_signal: f.offset("task_struct", "signal")?,
        signal_live: f.offset("signal_struct", "live")?,
        regs_args: syscall_args(&f)?,
        regs_syscall_nr: syscall_nr(&f)?,
    })
}

/// Where `struct pt_regs` keeps a syscall's first four arguments once it has returned. The
/// registers are the architecture's syscall ABI (x86_64 passes the fourth in `r10`, not the
/// function-call ABI's `cx`); their place in the struct comes from BTF.
fn syscall_args(f: &Finder<'_>) -> Result<[u32; 4], BtfError> {
    if cfg!(target_arch = "x86_64") {
        Ok([
            f.offset("pt_regs", "di")?,
            f.offset("pt_regs", "si")?,
            f.offset("pt_regs", "dx")?,
            f.offset("pt_regs", "r10")?,
        ])
    } else if cfg!(target_arch = "aarch64") {
        // x0 is overwritten by the return value; the kernel keeps the argument in orig_x0.
        let regs = f.offset("pt_regs", "regs")?;
        Ok([
            f.offset("pt_regs", "orig_x0")?,
            regs + 8,
            regs + 16,
            regs + 24,
        ])
    } else {
        Err(BtfError::Arch(std::env::consts::ARCH))
    }
}

/// Where `struct pt_regs` keeps the number of the syscall in progress.
fn syscall_nr(f: &Finder<'_>) -> Result<u32, BtfError> {
    if cfg!(target_arch = "x86_64") {
        f.offset("pt_regs", "orig_ax")
    } else if cfg!(target_arch = "aarch64") {
        f.offset("pt_regs", "syscallno")
    } else {
        Err(BtfError::Arch(std::env::consts::ARCH))
    }
}

struct Finder<'a> {
    btf: &'a Btf,
}

impl Finder<'_> {
    /// Byte offset of a dotted member path inside a named struct.
    fn offset(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        let mut ty = self.named_struct(strukt)?;
        let mut total_bits = 0u32;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let (bits, member_ty) =
                self.find_member(&ty, part)?
                    .ok_or_else(|| BtfError::NoMember {
                        strukt: strukt.to_string(),
                        member: path.to_string(),
                    })?;
            total_bits += bits;
            if parts.peek().is_some() {
                ty = member_ty;
            }
        }
        if !total_bits.is_multiple_of(8) {
            return Err(BtfError::Bitfield {
                strukt: strukt.to_string(),
                member: path.to_string(),
            });
        }
        Ok(total_bits / 8)
    }

    fn named_struct(&self, name: &str) -> Result<Type, BtfError> {
        self.btf
            .resolve_types_by_name(name)?
            .into_iter()
            .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))
            .ok_or_else(|| BtfError::NoStruct(name.to_string()))
    }

    /// Skips typedefs and qualifiers down to the underlying type.
    fn strip(&self, mut ty: Type) -> Result<Type, BtfError> {
        loop {
            ty = match &ty {
                Type::Typedef(t) => self.btf.resolve_chained_type(t)?,
                Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => {
                    self.btf.resolve_chained_type(t)?
                }
                Type::TypeTag(t) => self.btf.resolve_chained_type(t)?,
                _ => return Ok(ty),
            };
        }
    }

    /// Finds `name` among the members of `ty` (a struct or union), descending into anonymous
    /// members. Returns the bit offset and the member's (stripped) type.
    fn find_member(&self, ty: &Type, name: &str) -> Result<Option<(u32, Type)>, BtfError> {
        let members = match ty {
            Type::Struct(s) | Type::Union(s) => &s.members,
            _ => return Ok(None),
        };
        for m in members {
            let member_name = self.btf.resolve_name(m).unwrap_or_default();
            let member_ty = self.strip(self.btf.resolve_chained_type(m)?)?;
            if member_name == name {
                if m.bitfield_size().is_some_and(|s| s != 0) {
                    return Err(BtfError::Bitfield {
                        strukt: String::new(),
                        member: name.to_string(),
                    });
                }
                return Ok(Some((m.bit_offset(), member_ty)));
            }
            if member_name.is_empty()
                && let Some((bits, t)) = self.find_member(&member_ty, name)?
            {
                return Ok(Some((m.bit_offset() + bits, t)));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the running kernel's BTF: every offset is found and the ones whose layout is known
    /// on x86_64 6.x kernels are where they must be.
    #[test]
    fn offsets_from_running_kernel() {
        let off = kernel_offsets(Path::new(VMLINUX)).expect("BTF of the running kernel");
        // struct sock_common starts struct sock; skc_daddr is its first field.
        assert_eq!(off.sk_daddr, 0);
        assert_eq!(off.sk_rcv_saddr, 4);
        assert_eq!(off.sk_dport, 12);
        assert_eq!(off.sk_num, 14);
        assert_eq!(off.sk_family, 16);
        assert!(off.sk_v6_daddr > off.sk_family);
        assert!(off.task_files > 0 && off.socket_sk > 0);
        assert_eq!(
            off.task_tgid,
            off.task_pid + 4,
            "pid and tgid are neighbours"
        );
        assert!(off.task_signal > 0);
        assert_ne!(off.sk_protocol, 0);
        if cfg!(target_arch = "x86_64") {
            // The x86_64 register frame is ABI (it is ptrace's user_regs_struct too).
            assert_eq!(off.regs_args, [112, 104, 96, 56], "di, si, dx, r10");
            assert_eq!(off.regs_syscall_nr, 120, "orig_ax");
        }
    }
}
