//! Maps and read-only globals shared by every program. Every map is bounded; when one is full the
//! event is counted under a `counter::*` reason instead of vanishing.

use core::mem::MaybeUninit;

use agent_common::{
    ConnInfo, Counters, DataEvent, KernelOffsets, SYSCALL_NRS, Settings, WAKEUP_WINDOW_NS, select,
};
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::bpf_get_current_cgroup_id,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};

/// A read-only global the loader writes before load (`EbpfLoader::override_global`), read one
/// field at a time. aya's `Global::load` copies the whole value with a volatile read: 26 loads
/// of `KernelOffsets` in every program wherever one offset was needed.
#[repr(transparent)]
pub struct Loaded<T>(MaybeUninit<T>);

// SAFETY: never written after load; programs only read it.
unsafe impl<T: Sync> Sync for Loaded<T> {}

impl<T> Loaded<T> {
    pub const fn new(value: T) -> Self {
        Self(MaybeUninit::new(value))
    }

    /// The field `field` picks, read volatile so that the compiler does not fold the
    /// placeholder value written here at build time.
    #[inline(always)]
    pub fn get<F: Copy>(&self, field: impl FnOnce(&T) -> &F) -> F {
        // SAFETY: the value is initialised by `new` (and rewritten whole by the loader).
        unsafe { core::ptr::read_volatile(field(self.0.assume_init_ref())) }
    }
}

/// One field of `OFFSETS`.
macro_rules! offset {
    ($field:ident) => {
        $crate::maps::OFFSETS.get(|o| &o.$field)
    };
}
pub(crate) use offset;

/// One field of `SETTINGS`.
macro_rules! setting {
    ($field:ident) => {
        $crate::maps::SETTINGS.get(|s| &s.$field)
    };
}
pub(crate) use setting;

/// Kernel struct offsets from BTF, written by the loader before the programs are loaded.
#[unsafe(no_mangle)]
pub static OFFSETS: Loaded<KernelOffsets> = Loaded::new(KernelOffsets {
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_private_data: 0,
    file_inode: 0,
    inode_mode: 0,
    socket_type: 0,
    socket_sk: 0,
    sk_family: 0,
    sk_protocol: 0,
    sk_rcv_saddr: 0,
    sk_daddr: 0,
    sk_v6_rcv_saddr: 0,
    sk_v6_daddr: 0,
    sk_num: 0,
    sk_dport: 0,
    task_pid: 0,
    task_tgid: 0,
    task_signal: 0,
    signal_live: 0,
    regs_args: [0; 4],
    regs_syscall_nr: 0,
});

/// Run-time settings written by the loader before load.
#[unsafe(no_mangle)]
pub static SETTINGS: Loaded<Settings> = Loaded::new(Settings {
    agent_tgid: 0,
    capture_bytes: 0,
    flags: 0,
    wakeup_bytes: 0,
    wakeup_window_ns: WAKEUP_WINDOW_NS,
    syscall_nrs: [-1; SYSCALL_NRS],
});

/// The running architecture's number of the call `code` (a `syscall::*` code that moves bytes).
#[inline(always)]
pub fn syscall_nr(code: u8) -> i32 {
    SETTINGS.get(|s| &s.syscall_nrs[code as usize % SYSCALL_NRS])
}

/// Processes to trace: one byte per tgid (0 untraced, else why: 1 selected by userspace, 2
/// forked from a traced process, 3 selected by port in the kernel), eight to an element. Every
/// syscall program of every process asks first whether its process is traced; an array load is
/// inlined by the verifier where a hash lookup cost a call and a hash (~90 ns on these VMs).
/// Sized by the loader to the host's `pid_max` (one byte per possible tgid, 4 MiB at most) and
/// mapped into userspace (`BPF_F_MMAPABLE`), which writes single bytes: no writer ever
/// rewrites a neighbour's byte, so the kernel's and userspace's writes need no lock.
#[map]
pub static TRACED: Array<u64> = Array::with_max_entries(4096, BPF_F_MMAPABLE);

/// Processes never traced, whatever else selects them (`--exclude-*`), inherited on fork.
#[map]
pub static EXCLUDED_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(16_384, 0);

/// cgroup v2 ids whose processes are traced (`--container`), when `select::CGROUPS` is set.
#[map]
pub static TRACED_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(4_096, 0);

/// Ports that select a process accepting or connecting on them, when `select::PORTS` is set.
#[map]
pub static SELECT_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1_024, 0);

/// Socket events to userspace: `EventHeader` followed by `captured` payload bytes.
/// Its size is set by the loader at start-up (`--ring-buffer-size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Arguments of a syscall in progress, from its enter to its exit tracepoint: one slot per
/// thread, at `tid % INFLIGHT_SLOTS`, owned by the `pid_tgid` written in it. An array slot costs
/// the exit program of every thread (traced or not) one inlined load, where a hash map cost a
/// lookup, and the enter and exit of a traced call an insert and a delete.
#[map]
pub static INFLIGHT: Array<Inflight> = Array::with_max_entries(INFLIGHT_SLOTS, 0);

/// Number of `INFLIGHT` slots (a power of two). Thread ids are below it on hosts with the
/// kernel's default `pid_max` (32768); above it, two threads share a slot.
pub const INFLIGHT_SLOTS: u32 = 65_536;

/// Where a thread's call goes when a live thread sharing its slot is inside a call too (only
/// possible when `pid_max` exceeds `INFLIGHT_SLOTS`), keyed by pid_tgid.
#[map]
pub static INFLIGHT_SPILL: HashMap<u64, Inflight> = HashMap::with_max_entries(16_384, 0);

/// Set once any TLS library call was seen: until then, socket syscalls skip the TLS checks.
#[map]
pub static TLS_SEEN: Array<u32> = Array::with_max_entries(1, 0);

/// (tgid << 32 | fd) → what that fd is. LRU: an evicted entry is simply resolved again.
#[map]
pub static CONNS: LruHashMap<u64, ConnInfo> = LruHashMap::with_max_entries(65_536, 0);

/// Per-CPU scratch space where a record is assembled before it goes into the ring buffer
/// (too large for the 512-byte BPF stack).
#[map]
pub static SCRATCH: PerCpuArray<DataEvent> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU counters: one slot holding all of them (`agent_common::Counters`).
#[map]
pub static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

/// How a syscall passes its buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BufKind {
    /// `buf` is a plain user buffer.
    Plain = 0,
    /// `buf` points to an array of `iovec` with `count` entries.
    Iov = 1,
    /// `buf` points to a `user_msghdr`.
    Msg = 2,
    /// No user buffer (sendfile): only the length is reported.
    None = 3,
}

/// Saved arguments of a syscall between its enter and exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Inflight {
    /// The thread whose call this is (0: the slot is free).
    pub owner: u64,
    pub enter_ns: u64,
    pub buf: u64,
    pub count: u64,
    pub fd: i32,
    pub syscall: u8,
    pub direction: u8,
    pub kind: BufKind,
    /// Set (and never cleared) on a slot when another thread sharing it spilled its call into
    /// `INFLIGHT_SPILL`: only then do exits that miss the slot look there.
    pub spilled: u8,
    /// The kernel's number of the syscall this is (`__syscall_nr`): an exit takes only its own
    /// call's slot, not one left by a call whose exit is not traced.
    pub nr: i32,
    pub _pad: u32,
    /// The socket, when the program that saved the call had it (the socket tracepoints), else 0.
    /// A send's end takes only a start on its own socket, and the connection cache is checked
    /// against it instead of walking the fd table.
    pub sk: u64,
}

/// `bpf_ringbuf_output` flag: wake the reader now.
pub const FORCE_WAKEUP: u64 = 2;

/// When the kernel last woke the ring buffer's reader (`bpf_ktime_get_ns`).
#[map]
pub static LAST_WAKEUP: Array<u64> = Array::with_max_entries(1, 0);

/// `bpf_ringbuf_output` flags for a record sent at `now`: wake the reader once
/// `Settings::wakeup_bytes` are queued, or when it was last woken `Settings::wakeup_window_ns`
/// ago or more. A wake-up per record costs the reader a context switch per syscall traced; a
/// timer in the reader instead would wake it when nothing happens. So: the first record after a
/// quiet spell wakes the reader at once, the records that follow within the window ride along,
/// and an idle host wakes nobody. (The reader's one-shot check after each drain,
/// `capture::Backstop`, picks up the tail of a burst.)
///
/// Wake-ups for queued bytes are at least `WAKEUP_GAP_NS` apart: until the woken reader gets a
/// CPU, the bytes stay queued, and every record would wake it again, each wake-up an interrupt
/// on the traced application's CPU. The gap is checked first, so most records also skip the
/// ring's depth query.
#[inline(always)]
pub fn wakeup_flags(now: u64) -> u64 {
    const AVAIL_DATA: u64 = 0;
    const NO_WAKEUP: u64 = 1;
    const WAKEUP_GAP_NS: u64 = 1_000_000;
    let Some(last) = LAST_WAKEUP.get_ptr_mut(0) else {
        return FORCE_WAKEUP;
    };
    // SAFETY: a plain timestamp; racing writers on other CPUs store nearly the same value.
    unsafe {
        let since = now.wrapping_sub(*last);
        if since >= setting!(wakeup_window_ns)
            || (since >= WAKEUP_GAP_NS
                && EVENTS.query(AVAIL_DATA) >= u64::from(setting!(wakeup_bytes)))
        {
            *last = now;
            return FORCE_WAKEUP;
        }
    }
    NO_WAKEUP
}

/// Adds one to a counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        if let Some(v) = unsafe { (*slot).values.get_mut(index as usize) } {
            *v += 1;
        }
    }
}

/// Marks `TRACED` values: why the kernel traces a process.
pub const BY_FORK: u8 = 2;
pub const BY_PORT: u8 = 3;

/// The `TRACED` byte of `tgid`, or `None` beyond the host's `pid_max` at start-up.
#[inline(always)]
fn traced_byte(tgid: u32) -> Option<*mut u8> {
    let word = TRACED.get_ptr_mut(tgid >> 3)?;
    // SAFETY: an offset of 0..=7 inside the 8-byte element.
    Some(unsafe { (word as *mut u8).add((tgid & 7) as usize) })
}

/// Why `tgid` is traced (`BY_*`), 0 when it is not.
#[inline(always)]
pub fn traced_reason(tgid: u32) -> u8 {
    // SAFETY: a byte of a map element; a concurrent writer only makes it stale.
    traced_byte(tgid).map_or(0, |b| unsafe { core::ptr::read_volatile(b) })
}

/// Marks `tgid` traced; false when it cannot be represented (a tgid beyond `pid_max`).
#[inline(always)]
pub fn set_traced(tgid: u32, why: u8) -> bool {
    match traced_byte(tgid) {
        Some(b) => {
            // SAFETY: a single-byte store to this tgid's own byte.
            unsafe { core::ptr::write_volatile(b, why) };
            true
        }
        None => false,
    }
}

/// Marks `tgid` untraced.
#[inline(always)]
pub fn clear_traced(tgid: u32) {
    if let Some(b) = traced_byte(tgid) {
        // SAFETY: as for `set_traced`.
        unsafe { core::ptr::write_volatile(b, 0) };
    }
}

/// True when this tgid is one the agent traces. The common case, an untraced process with only
/// pid selection, costs one inlined array load.
#[inline(always)]
pub fn is_traced(tgid: u32) -> bool {
    if tgid == setting!(agent_tgid) {
        return false;
    }
    // SAFETY (all map reads): plain values; a concurrent update can only make them stale.
    if traced_reason(tgid) != 0 {
        return true;
    }
    let flags = setting!(flags);
    if flags & (select::ALL | select::CGROUPS) == 0 {
        return false;
    }
    if unsafe { EXCLUDED_TGIDS.get(tgid).is_some() } {
        return false;
    }
    if flags & select::ALL != 0 {
        return true;
    }
    // SAFETY: helper without preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    unsafe { TRACED_CGROUPS.get(cgroup).is_some() }
}

/// True when an untraced process may be selected by port in the kernel.
#[inline(always)]
pub fn may_select_by_port(tgid: u32) -> bool {
    setting!(flags) & select::PORTS != 0
        && tgid != setting!(agent_tgid)
        // SAFETY: plain value.
        && unsafe { EXCLUDED_TGIDS.get(tgid).is_none() }
}

/// True when `port` is one of the selected ports.
#[inline(always)]
pub fn is_selected_port(port: u16) -> bool {
    // SAFETY: plain value.
    port != 0 && unsafe { SELECT_PORTS.get(port).is_some() }
}
