//! Loading and attaching the kernel programs: the only module, with `capture`, that talks to the
//! kernel. It checks privileges, mounts tracefs when needed, writes the BTF offsets and settings
//! into the programs' globals, attaches every tracepoint and hands out the maps.

use std::{path::Path, time::Duration};

use agent_common::{ConnInfo, Counters, KernelOffsets, SYSCALL_NRS, Settings, counter, syscall};
use anyhow::{Context as _, Result, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, Program, ProgramError, RawTracePoint, TracePoint},
};
use tracing::{debug, info};

use crate::{
    btf,
    select::traced::{self, TracedSet},
};

/// The compiled kernel programs, embedded at build time by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent"));

/// The syscall tracepoints every kernel gets (the program and the tracepoint have the same name):
/// connection boundaries and roles, and executable mappings (TLS libraries).
pub const TRACEPOINTS: &[&str] = &[
    "sys_enter_connect",
    "sys_exit_connect",
    "sys_enter_accept",
    "sys_exit_accept",
    "sys_enter_accept4",
    "sys_exit_accept4",
    "sys_enter_close",
    "sys_enter_mmap",
    "sys_exit_mmap",
];

/// The BTF tracepoints inside the kernel's socket calls, where the bytes are read (see
/// `agent-ebpf/src/socket_calls.rs`; the program has the tracepoint's name). Only socket calls
/// run them, without the record a syscall tracepoint builds per call.
pub const SOCKET_TRACEPOINTS: &[&str] =
    &["sock_recv_length", "tcp_sendmsg_locked", "sock_send_length"];

/// Where the kernel lacks `SOCKET_TRACEPOINTS` (before 6.3), the syscall tracepoints of the calls
/// that move bytes: every such call of every process runs them. Receives are read at their exit,
/// sends timed from their enter.
pub const SYSCALL_IO_TRACEPOINTS: &[&str] = &[
    "sys_exit_read",
    "sys_enter_write",
    "sys_exit_write",
    "sys_exit_readv",
    "sys_enter_writev",
    "sys_exit_writev",
    "sys_exit_recvfrom",
    "sys_enter_sendto",
    "sys_exit_sendto",
    "sys_exit_recvmsg",
    "sys_enter_sendmsg",
    "sys_exit_sendmsg",
    "sys_enter_sendfile64",
    "sys_exit_sendfile64",
];

/// Process lifecycle tracepoints (category `sched`).
pub const SCHED_TRACEPOINTS: &[&str] = &["sched_process_exec", "sched_process_exit"];

/// Raw tracepoints (the program and the tracepoint have the same name).
pub const RAW_TRACEPOINTS: &[&str] = &["sched_process_fork"];

/// Where tracefs is mounted on current systems.
const TRACEFS: &str = "/sys/kernel/tracing";

/// What the loader needs to know.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Payload bytes to capture per syscall.
    pub capture_bytes: u32,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_buffer_bytes: u32,
    /// `agent_common::select` bits: what the kernel selects by itself.
    pub select_flags: u32,
    /// The ring buffer's ride-along window (`agent_common::WAKEUP_WINDOW_NS`).
    pub wakeup_window: Duration,
    /// Read the bytes at the syscall tracepoints even where `SOCKET_TRACEPOINTS` exist.
    pub syscall_tracepoints: bool,
}

/// The kernel's cache of traced file descriptors, through which userspace tells the kernel to
/// stop shipping a connection's bytes.
pub struct Conns(HashMap<MapData, u64, ConnInfo>);

impl Conns {
    /// Marks bytes of the connection behind (tgid, fd) as of no use (`agent_common::IGNORE_*`
    /// bits), if it is still the socket `sock`.
    pub fn ignore(&mut self, tgid: u32, fd: i32, sock: u64, bits: u8) -> bool {
        let key = ((tgid as u64) << 32) | (fd as u32 as u64);
        match self.0.get(&key, 0) {
            Ok(mut info) if info.sock == sock && info.ignore & bits != bits => {
                info.ignore |= bits;
                self.0.insert(key, info, 0).is_ok()
            }
            _ => false,
        }
    }
}

/// The loaded, attached programs and the maps userspace uses. Dropping it detaches everything.
pub struct Probes {
    /// Keeps the programs (and their links) alive.
    pub ebpf: Ebpf,
    /// Kernel-side counters.
    pub counters: PerCpuArray<MapData, Counters>,
}

/// The maps through which userspace tells the kernel which processes to trace.
pub struct SelectMaps {
    /// Traced processes (a byte per tgid, shared with the kernel).
    pub traced: TracedSet,
    /// Processes never traced.
    pub excluded: HashMap<MapData, u32, u8>,
    /// cgroup ids whose processes are traced.
    pub cgroups: HashMap<MapData, u64, u8>,
    /// Ports that select processes.
    pub ports: HashMap<MapData, u16, u8>,
}

/// Fails with one clear sentence when the agent cannot run eBPF at all.
pub fn check_privileges() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the agent must run as root (it loads eBPF programs, needing CAP_BPF, CAP_PERFMON and \
             CAP_SYS_RESOURCE): run it with sudo"
        );
    }
    Ok(())
}

/// Mounts tracefs at /sys/kernel/tracing when nothing is mounted there: tracepoints are found
/// through it. Says what to do when it cannot.
pub fn ensure_tracefs() -> Result<()> {
    let events = Path::new(TRACEFS).join("events");
    if events.is_dir() {
        return Ok(());
    }
    if Path::new("/sys/kernel/debug/tracing/events").is_dir() {
        return Ok(());
    }
    info!("tracefs is not mounted; mounting it at {TRACEFS}");
    nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| {
        format!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed; mount it yourself \
             (`mount -t tracefs tracefs {TRACEFS}`) or, in a container, mount the host's \
             {TRACEFS}"
        )
    })?;
    Ok(())
}

/// What loading hands out: the probes, the maps userspace writes, and the ring buffer (for
/// `capture` to own).
pub struct Loaded {
    pub probes: Probes,
    pub select: SelectMaps,
    pub conns: Conns,
    pub events: RingBuf<MapData>,
}

/// Loads the programs with the given offsets and settings and attaches every tracepoint.
pub fn load(offsets: KernelOffsets, opts: &LoadOptions) -> Result<Loaded> {
    // Older kernels charge BPF memory to RLIMIT_MEMLOCK; lift it (harmless on newer ones).
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        debug!("could not lift RLIMIT_MEMLOCK; continuing");
    }
    let settings = Settings {
        agent_tgid: std::process::id(),
        capture_bytes: opts.capture_bytes,
        flags: opts.select_flags,
        wakeup_bytes: agent_common::wakeup_bytes(opts.ring_buffer_bytes),
        wakeup_window_ns: u64::try_from(opts.wakeup_window.as_nanos()).unwrap_or(u64::MAX),
        syscall_nrs: syscall_numbers(),
    };
    let mut ebpf = EbpfLoader::new()
        .override_global("OFFSETS", &offsets, true)
        .override_global("SETTINGS", &settings, true)
        .map_max_entries("EVENTS", opts.ring_buffer_bytes)
        .map_max_entries("TRACED", traced::elements())
        .load(EBPF_OBJECT)
        .map_err(explain_load_error)?;
    let io: &[&str] = if opts.syscall_tracepoints {
        info!("bytes read at the syscall tracepoints (--syscall-tracepoints)");
        SYSCALL_IO_TRACEPOINTS
    } else {
        match attach_socket_tracepoints(&mut ebpf) {
            Ok(()) => {
                debug!("bytes read at the socket tracepoints");
                &[]
            }
            Err(err) => {
                info!(
                    "bytes read at the syscall tracepoints (socket tracepoints not usable: {err:#})"
                );
                SYSCALL_IO_TRACEPOINTS
            }
        }
    };
    let tracepoints = TRACEPOINTS
        .iter()
        .chain(io)
        .map(|n| ("syscalls", *n))
        .chain(SCHED_TRACEPOINTS.iter().map(|n| ("sched", *n)));
    for (category, name) in tracepoints {
        let program: &mut TracePoint = program(&mut ebpf, name, "tracepoint")?;
        program
            .load()
            .with_context(|| format!("the kernel refused to load {name}"))?;
        program
            .attach(category, name)
            .with_context(|| format!("attaching {category}/{name}"))?;
    }
    for name in RAW_TRACEPOINTS {
        let program: &mut RawTracePoint = program(&mut ebpf, name, "raw tracepoint")?;
        program
            .load()
            .with_context(|| format!("the kernel refused to load {name}"))?;
        program
            .attach(name)
            .with_context(|| format!("attaching raw tracepoint {name}"))?;
    }
    let io_programs = if io.is_empty() {
        SOCKET_TRACEPOINTS.len()
    } else {
        io.len()
    };
    debug!(
        programs =
            TRACEPOINTS.len() + io_programs + SCHED_TRACEPOINTS.len() + RAW_TRACEPOINTS.len(),
        "programs attached"
    );
    let events = RingBuf::try_from(take(&mut ebpf, "EVENTS")?)?;
    let select = SelectMaps {
        traced: TracedSet::new(take(&mut ebpf, "TRACED")?)?,
        excluded: HashMap::try_from(take(&mut ebpf, "EXCLUDED_TGIDS")?)?,
        cgroups: HashMap::try_from(take(&mut ebpf, "TRACED_CGROUPS")?)?,
        ports: HashMap::try_from(take(&mut ebpf, "SELECT_PORTS")?)?,
    };
    let conns = Conns(HashMap::try_from(take(&mut ebpf, "CONNS")?)?);
    let counters = PerCpuArray::try_from(take(&mut ebpf, "COUNTERS")?)?;
    Ok(Loaded {
        probes: Probes { ebpf, counters },
        select,
        conns,
        events,
    })
}

/// Loads and attaches `SOCKET_TRACEPOINTS`, which need the running kernel's own BTF and a
/// kernel that has them all. On failure none stays attached, so that the syscall tracepoints
/// taking their place never see the same bytes twice.
fn attach_socket_tracepoints(ebpf: &mut Ebpf) -> Result<()> {
    let btf = Btf::from_sys_fs().context("reading the running kernel's BTF")?;
    let mut attach = || -> Result<()> {
        for name in SOCKET_TRACEPOINTS {
            let program: &mut BtfTracePoint = program(ebpf, name, "BTF tracepoint")?;
            program
                .load(name, &btf)
                .with_context(|| format!("the kernel refused to load {name}"))?;
            program
                .attach()
                .with_context(|| format!("attaching tp_btf/{name}"))?;
        }
        Ok(())
    };
    let result = attach();
    if result.is_err() {
        for name in SOCKET_TRACEPOINTS {
            if let Ok(program) = program::<BtfTracePoint>(ebpf, name, "BTF tracepoint") {
                // Unloading a program that never loaded fails harmlessly.
                let _ = program.unload();
            }
        }
    }
    result
}

/// This architecture's numbers of the calls that move bytes, by their `agent_common::syscall`
/// code (`Settings::syscall_nrs`): the socket tracepoints tell by them which call they run in.
fn syscall_numbers() -> [i32; SYSCALL_NRS] {
    let mut nrs = [-1; SYSCALL_NRS];
    for (code, nr) in [
        (syscall::READ, libc::SYS_read),
        (syscall::WRITE, libc::SYS_write),
        (syscall::READV, libc::SYS_readv),
        (syscall::WRITEV, libc::SYS_writev),
        (syscall::RECVFROM, libc::SYS_recvfrom),
        (syscall::SENDTO, libc::SYS_sendto),
        (syscall::RECVMSG, libc::SYS_recvmsg),
        (syscall::SENDMSG, libc::SYS_sendmsg),
        (syscall::SENDFILE, libc::SYS_sendfile),
    ] {
        // Syscall numbers are small: all of these are below 300 on every architecture.
        nrs[usize::from(code)] = nr as i32;
    }
    nrs
}

/// The program `name` of the object, as the `kind` of program `P` it must be.
pub fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str, kind: &str) -> Result<&'a mut P>
where
    &'a mut Program: TryInto<&'a mut P, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a {kind}"))
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .with_context(|| format!("map {name} missing from the eBPF object"))
}

fn explain_load_error(err: aya::EbpfError) -> anyhow::Error {
    let text = format!("{err:#}");
    if text.contains("EPERM") || text.contains("Operation not permitted") {
        anyhow::Error::new(err).context(
            "the kernel refused to load eBPF programs (EPERM): the agent needs root with \
             CAP_BPF and CAP_PERFMON, and unprivileged BPF or lockdown settings may forbid it",
        )
    } else {
        anyhow::Error::new(err).context("loading the eBPF programs failed")
    }
}

impl Probes {
    /// Sums the per-CPU kernel counters.
    pub fn counters(&self) -> Result<[u64; counter::COUNT as usize]> {
        sum_counters(&self.counters)
    }
}

/// Sums a per-CPU counter map, indexed by `agent_common::counter`.
pub fn sum_counters(
    map: &PerCpuArray<MapData, Counters>,
) -> Result<[u64; counter::COUNT as usize]> {
    let mut out = [0u64; counter::COUNT as usize];
    for cpu in map.get(&0, 0)?.iter() {
        for (sum, v) in out.iter_mut().zip(cpu.values) {
            *sum += v;
        }
    }
    Ok(out)
}

/// Reads the BTF offsets with a message that says what to do on failure.
pub fn offsets(path: &Path) -> Result<KernelOffsets> {
    btf::kernel_offsets(path).with_context(|| {
        format!(
            "cannot compute kernel struct offsets from {}; the agent needs a kernel built with BTF \
             (CONFIG_DEBUG_INFO_BTF=y), or pass --btf with a BTF file for this kernel",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every call that moves bytes has its own number, and nothing else has one: the socket
    /// tracepoints would otherwise read a buffer the wrong way, or take no call for a known one.
    #[test]
    fn each_call_that_moves_bytes_has_a_distinct_number() {
        let nrs = syscall_numbers();
        assert_eq!(nrs[0], -1, "index 0 is no call");
        let known = &nrs[usize::from(syscall::READ)..=usize::from(syscall::SENDFILE)];
        assert!(known.iter().all(|&n| n >= 0), "{nrs:?}");
        let mut sorted = known.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), known.len(), "{nrs:?}");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            (
                nrs[usize::from(syscall::READ)],
                nrs[usize::from(syscall::RECVFROM)]
            ),
            (0, 45)
        );
    }
}
