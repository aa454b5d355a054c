//! Places every span in its trace, under its parent.
//!
//! The linker sees each request twice: when its head is read ([`Record::Started`]) and when it
//! ends ([`Record::Finished`] or [`Record::Abandoned`]). At the start it decides where the span
//! will sit, from these sources, most certain first:
//!
//! 1. **Same host, both ends traced** (SERVER spans): the client end of the connection belongs
//!    to a traced process, so the client's CLIENT span for the very same request (same
//!    connection, same head fingerprint, in order) is the parent, in the client's trace. The
//!    client's record may arrive a little after the server's (two CPUs), so the server waits for
//!    it, up to [`PEER_WAIT_NS`] of kernel time.
//! 2. **Propagated context** (SERVER spans): `traceparent` / B3 on the request. The span joins
//!    that trace under the sender's span.
//! 3. **Thread** (CLIENT spans): a request written by a thread that is serving exactly one
//!    inbound request (from the read of its first byte to the end of its response) is a child of
//!    that SERVER span. A process seen serving overlapping requests of different connections on
//!    one thread (an event loop), or whose runtime multiplexes work over threads (Go, libuv),
//!    never links this way: an unlinked span is better than a wrong parent.
//! 4. **Forwarded context** (CLIENT spans): an outbound request carrying exactly the context an
//!    active inbound request of the same process received is that request's child, whatever
//!    thread wrote it. This links event loops that forward headers.
//! 5. Otherwise the span is the root of a new trace.
//!
//! A CLIENT request that already carries `traceparent`/B3 keeps that trace and, unless the
//! context was merely forwarded, takes the header's span id as its own, so that the downstream
//! SERVER span (traced by this agent or another one) names it as its parent.
//!
//! A span whose parent is not settled yet (the parent waits for its own client) is held until it
//! is. Every map here is bounded; requests beyond the bound are not linked and are counted.

use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};
use smol_str::SmolStr;
use std::collections::VecDeque;

use tracing::info;

use super::{
    Span, make_span, new_span_id, new_trace_id,
    propagation::{Extracted, Format, Remote},
    route::Routes,
    sampler::Sampler,
};
use crate::{
    clock::WallClock,
    conn::{ConnMeta, ConnRecord, Role, Tuple},
    process::Processes,
    protocol::{Exchange, Record, Start},
    stats::Stats,
};

mod settle;

use settle::placement;

/// How long (kernel time) a SERVER request whose client is traced here waits for the client's
/// record before it settles on what it knows alone.
pub const PEER_WAIT_NS: u64 = 500_000_000;
/// How long a CLIENT request stays available for its server end to find.
const CLIENT_ENTRY_NS: u64 = 5_000_000_000;
/// Most requests tracked at once; beyond it requests get unlinked root spans (counted).
const MAX_CTXS: usize = 131_072;
/// Most unmatched CLIENT requests remembered per connection.
const MAX_CLIENT_ENTRIES: usize = 64;
/// How often old CLIENT requests are looked for. `tick` runs ten times a second while a SERVER
/// request waits, and a process making outbound calls always has recent ones: sweeping them
/// each time visited every entry of every connection ten times a second (5% of the agent's CPU
/// for a Python service at 200 requests/s). Entries then live 5 to 6 seconds.
const CLIENT_SWEEP_NS: u64 = 1_000_000_000;

/// A request, across the whole agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ReqKey {
    conn: u64,
    id: u64,
}

/// How a span got its place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// First span of a new trace.
    Root,
    /// From headers the request carried.
    Propagated(Format),
    /// Child of the SERVER span its thread was serving.
    Thread,
    /// Child of the SERVER span whose propagated context it forwarded.
    Forwarded,
    /// SERVER span under the CLIENT span of a traced process on this host.
    Peer,
}

/// Where a span sits in its trace, once known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    /// The parent lives in another process (or another host).
    pub parent_remote: bool,
    pub sampled: bool,
    pub trace_state: SmolStr,
    pub link: Link,
}

/// The settled part of a placement (everything but the span's own id).
#[derive(Debug, Clone)]
struct Settled {
    trace_id: [u8; 16],
    parent: Option<[u8; 8]>,
    parent_remote: bool,
    sampled: bool,
    trace_state: SmolStr,
    link: Link,
}

/// Why a span waits.
#[derive(Debug, Clone, Copy)]
enum Via {
    Thread,
    Forwarded,
    Peer,
}

#[derive(Debug)]
enum State {
    Settled(Settled),
    /// Waits for another span to settle; inherits from it.
    AwaitParent {
        parent: ReqKey,
        via: Via,
    },
    /// A SERVER request whose client end is traced here: waits for the client's record.
    AwaitClient {
        deadline_ns: u64,
    },
}

/// One tracked request.
#[derive(Debug)]
struct Ctx {
    meta: ConnMeta,
    tid: u32,
    started_ns: u64,
    span_id: [u8; 8],
    fingerprint: u64,
    /// Context carried on the request itself.
    carried: Option<Remote>,
    state: State,
    /// Spans waiting for this one to settle.
    children: Vec<ReqKey>,
    /// Between its start and its end (finished or abandoned).
    active: bool,
    /// Finished, waiting for its placement.
    held: Option<Box<Exchange>>,
}

/// A CLIENT request of a traced process, for its server end on this host to find.
#[derive(Debug)]
struct ClientEntry {
    key: ReqKey,
    fingerprint: u64,
    started_ns: u64,
    span_id: [u8; 8],
    settled: Option<Settled>,
}

/// The linking state of all traced processes.
pub struct Linker {
    sampler: Sampler,
    ctxs: HashMap<ReqKey, Ctx>,
    /// Active SERVER requests per (tgid, tid).
    threads: HashMap<(u32, u32), Vec<ReqKey>>,
    /// Active SERVER requests per (tgid, span id of the context they received).
    received: HashMap<(u32, [u8; 8]), Vec<ReqKey>>,
    /// Recent CLIENT requests per connection, for their server ends.
    clients: HashMap<Tuple, VecDeque<ClientEntry>>,
    /// SERVER requests waiting for their client's request, per connection.
    waiting: HashMap<Tuple, VecDeque<ReqKey>>,
    /// Processes seen serving overlapping requests on one thread.
    multiplexed: HashSet<u32>,
    /// Latest kernel time seen in a record.
    now_ns: u64,
    /// When `tick` next sweeps `clients` (kernel time).
    next_client_sweep_ns: u64,
    /// Ids need to be unique, not unpredictable: a small fast generator, seeded from the OS,
    /// as the OpenTelemetry SDKs use (ChaCha cost ~1% of the agent's CPU at 25k spans/s).
    rng: rand::rngs::SmallRng,
    /// How SERVER spans get their `http.route`.
    routes: Routes,
    /// Kernel times to wall-clock times, read once per batch of records.
    clock: WallClock,
}

impl Linker {
    pub fn new(sampler: Sampler) -> Self {
        Self {
            sampler,
            routes: Routes::default(),
            ctxs: HashMap::new(),
            threads: HashMap::new(),
            received: HashMap::new(),
            clients: HashMap::new(),
            waiting: HashMap::new(),
            multiplexed: HashSet::new(),
            now_ns: 0,
            next_client_sweep_ns: 0,
            rng: <rand::rngs::SmallRng as rand::SeedableRng>::from_os_rng(),
            clock: WallClock::default(),
        }
    }

    /// Starts a batch of records: the spans made from now on read the wall clock afresh.
    pub fn refresh_clock(&mut self) {
        self.clock.refresh();
    }

    /// Uses these route patterns for `http.route`.
    pub fn with_routes(mut self, routes: Routes) -> Self {
        self.routes = routes;
        self
    }

    /// Whether a SERVER request waits for its client's request: `tick` must then run soon.
    /// Old CLIENT requests need no timer of their own: `tick` also runs once a second with the
    /// agent's housekeeping, and forgets them then (a process calling untraced peers always has
    /// some, and waking the agent ten times a second for them cost more than the sweep).
    pub fn waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Requests currently tracked (for tests and health counters).
    pub fn tracked(&self) -> usize {
        self.ctxs.len()
    }

    /// Takes one record; spans whose placement is known are appended to `out`.
    pub fn record(
        &mut self,
        rec: ConnRecord,
        processes: &mut Processes,
        stats: &Stats,
        out: &mut Vec<Span>,
    ) {
        let conn = rec.conn;
        match rec.record {
            Record::Started(start) => self.started(conn, start, processes, stats, out),
            Record::Finished { id, exchange } => {
                let key = ReqKey { conn: conn.id, id };
                self.deactivate(key);
                match self.ctxs.get_mut(&key) {
                    Some(ctx) => match &ctx.state {
                        State::Settled(s) => {
                            let placement = placement(s, ctx.span_id);
                            self.ctxs.remove(&key);
                            out.push(make_span(
                                &conn,
                                &exchange,
                                placement,
                                processes,
                                &self.routes,
                                self.clock.offset_ns(),
                            ));
                        }
                        _ => ctx.held = Some(exchange),
                    },
                    None => {
                        // Not tracked (the table was full when it started): a root span.
                        let settled = self.root();
                        let span_id = new_span_id(&mut self.rng);
                        out.push(make_span(
                            &conn,
                            &exchange,
                            placement(&settled, span_id),
                            processes,
                            &self.routes,
                            self.clock.offset_ns(),
                        ));
                    }
                }
            }
            Record::Abandoned { id } => {
                let key = ReqKey { conn: conn.id, id };
                self.deactivate(key);
                self.remove_if_done(key);
            }
        }
    }

    /// Settles SERVER requests that waited too long for their client, and forgets old client
    /// requests. `mono_ns` is the current monotonic time, used when no record arrives.
    pub fn tick(
        &mut self,
        mono_ns: u64,
        processes: &mut Processes,
        stats: &Stats,
        out: &mut Vec<Span>,
    ) {
        let now = self.now_ns.max(mono_ns.saturating_sub(2_000_000_000));
        let mut expired = Vec::new();
        for queue in self.waiting.values() {
            for key in queue {
                if let Some(ctx) = self.ctxs.get(key)
                    && let State::AwaitClient { deadline_ns } = ctx.state
                    && deadline_ns <= now
                {
                    expired.push(*key);
                }
            }
        }
        for key in expired {
            stats.inc(&stats.link_peer_timeouts);
            self.unwait(key);
            self.settle_alone(key, processes, stats, out);
        }
        self.waiting.retain(|_, q| !q.is_empty());
        if now < self.next_client_sweep_ns {
            return;
        }
        self.next_client_sweep_ns = now + CLIENT_SWEEP_NS;
        let cutoff = now.saturating_sub(CLIENT_ENTRY_NS);
        self.clients.retain(|_, q| {
            q.retain(|e| e.started_ns >= cutoff);
            !q.is_empty()
        });
    }

    /// Settles everything still waiting (at shutdown) so that held spans are emitted.
    pub fn flush(&mut self, processes: &mut Processes, stats: &Stats, out: &mut Vec<Span>) {
        let waiting: Vec<ReqKey> = self.waiting.values().flatten().copied().collect();
        for key in waiting {
            self.unwait(key);
            self.settle_alone(key, processes, stats, out);
        }
    }

    /// Forgets what is known about a process that exited.
    pub fn forget_process(&mut self, tgid: u32) {
        self.multiplexed.remove(&tgid);
        self.threads.retain(|(t, _), _| *t != tgid);
    }

    fn root(&mut self) -> Settled {
        let trace_id = new_trace_id(&mut self.rng);
        Settled {
            trace_id,
            parent: None,
            parent_remote: false,
            sampled: self.sampler.sample(&trace_id, None),
            trace_state: SmolStr::default(),
            link: Link::Root,
        }
    }

    /// A span whose parent is the sender of `remote`.
    fn under_remote(&self, remote: &Remote) -> Settled {
        Settled {
            trace_id: remote.trace_id,
            parent: Some(remote.span_id),
            parent_remote: true,
            sampled: self.sampler.sample(&remote.trace_id, Some(remote.sampled)),
            trace_state: SmolStr::new(&remote.trace_state),
            link: Link::Propagated(remote.format),
        }
    }

    /// Whether threads of this process may be used to link spans.
    fn thread_linkable(&self, tgid: u32, processes: &mut Processes) -> bool {
        !self.multiplexed.contains(&tgid) && !processes.get(tgid).runtime.multiplexes_threads()
    }

    fn started(
        &mut self,
        meta: ConnMeta,
        start: Start,
        processes: &mut Processes,
        stats: &Stats,
        out: &mut Vec<Span>,
    ) {
        self.now_ns = self.now_ns.max(start.first.exit_ns);
        let carried = match start.context {
            Extracted::Context(remote) => {
                stats.inc(match remote.format {
                    Format::TraceContext => &stats.context_tracecontext,
                    Format::B3 => &stats.context_b3,
                    Format::B3Multi => &stats.context_b3multi,
                });
                Some(remote)
            }
            Extracted::Malformed(format) => {
                stats.inc(&stats.context_malformed);
                tracing::debug!(
                    format = format.as_str(),
                    pid = meta.tgid,
                    "malformed trace context header ignored"
                );
                None
            }
            Extracted::None => None,
        };
        if self.ctxs.len() >= MAX_CTXS {
            stats.inc(&stats.link_table_full);
            return;
        }
        let key = ReqKey {
            conn: meta.id,
            id: start.id,
        };
        let tid = start.first.tid;
        let mut ctx = Ctx {
            meta,
            tid,
            started_ns: start.first.exit_ns,
            span_id: new_span_id(&mut self.rng),
            fingerprint: start.fingerprint,
            carried,
            state: State::Settled(Settled {
                trace_id: [0; 16],
                parent: None,
                parent_remote: false,
                sampled: false,
                trace_state: SmolStr::default(),
                link: Link::Root,
            }),
            children: Vec::new(),
            active: true,
            held: None,
        };
        match meta.role {
            Role::Server => {
                self.start_server(key, &mut ctx, start.thread_affine, processes, stats);
                self.ctxs.insert(key, ctx);
                self.link_waiting_children(key, processes, stats, out);
            }
            Role::Client => {
                let parent =
                    self.client_parent(meta.tgid, tid, ctx.carried.as_ref(), processes, stats);
                // The request's own context names this span, unless it merely forwards the
                // context its parent received (that id belongs to the caller's span).
                if let Some(remote) = &ctx.carried {
                    let forwarded = parent.is_some_and(|(p, _)| {
                        self.ctxs
                            .get(&p)
                            .and_then(|c| c.carried.as_ref())
                            .is_some_and(|pc| pc.span_id == remote.span_id)
                    });
                    if !forwarded {
                        ctx.span_id = remote.span_id;
                    }
                }
                ctx.state = match parent {
                    Some((p, via)) => State::AwaitParent { parent: p, via },
                    None => State::Settled(match &ctx.carried {
                        Some(remote) => Settled {
                            parent: None,
                            parent_remote: false,
                            ..self.under_remote(remote)
                        },
                        None => self.root(),
                    }),
                };
                let tuple = meta.peer.tuple(Role::Client);
                let entry = ClientEntry {
                    key,
                    fingerprint: ctx.fingerprint,
                    started_ns: ctx.started_ns,
                    span_id: ctx.span_id,
                    settled: None,
                };
                let queue = self.clients.entry(tuple).or_default();
                if queue.len() >= MAX_CLIENT_ENTRIES {
                    queue.pop_front();
                }
                queue.push_back(entry);
                self.ctxs.insert(key, ctx);
                if let Some((p, _)) = parent {
                    self.adopt(p, key, processes, stats, out);
                } else {
                    self.on_settled(key, processes, stats, out);
                }
                self.match_waiting_server(tuple, key, processes, stats, out);
            }
        }
    }

    /// Registers an inbound request on its thread and decides what it waits for.
    fn start_server(
        &mut self,
        key: ReqKey,
        ctx: &mut Ctx,
        thread_affine: bool,
        processes: &mut Processes,
        stats: &Stats,
    ) {
        let tgid = ctx.meta.tgid;
        if thread_affine && self.thread_linkable(tgid, processes) {
            let actives = self.threads.entry((tgid, ctx.tid)).or_default();
            let other_conn = actives.iter().any(|k| k.conn != key.conn);
            actives.push(key);
            if other_conn {
                self.multiplexed.insert(tgid);
                stats.inc(&stats.processes_multiplexed);
                info!(
                    pid = tgid,
                    "one thread serves several connections at once (an event loop): outbound \
                     calls of this process are linked only through the context they forward"
                );
            }
        }
        if let Some(remote) = &ctx.carried {
            self.received
                .entry((tgid, remote.span_id))
                .or_default()
                .push(key);
        }
        let tuple = ctx.meta.peer.tuple(Role::Server);
        if ctx.meta.peer_traced {
            if let Some(entry) = self.take_client_entry(tuple, ctx.fingerprint) {
                stats.inc(&stats.spans_linked_peer);
                ctx.state = match entry.settled {
                    Some(s) => State::Settled(self.peer_child(&s, entry.span_id)),
                    None => State::AwaitParent {
                        parent: entry.key,
                        via: Via::Peer,
                    },
                };
                return;
            }
            ctx.state = State::AwaitClient {
                deadline_ns: ctx.started_ns + PEER_WAIT_NS,
            };
            self.waiting.entry(tuple).or_default().push_back(key);
            return;
        }
        ctx.state = State::Settled(match &ctx.carried {
            Some(remote) => self.under_remote(remote),
            None => self.root(),
        });
    }

    /// Removes a request from the waiting queue of its connection.
    fn unwait(&mut self, key: ReqKey) {
        let Some(ctx) = self.ctxs.get(&key) else {
            return;
        };
        let tuple = ctx.meta.peer.tuple(Role::Server);
        if let Some(q) = self.waiting.get_mut(&tuple) {
            q.retain(|k| *k != key);
        }
    }

    /// The request ended: its thread no longer serves it.
    fn deactivate(&mut self, key: ReqKey) {
        let Some(ctx) = self.ctxs.get_mut(&key) else {
            return;
        };
        if !ctx.active {
            return;
        }
        ctx.active = false;
        if ctx.meta.role != Role::Server {
            return;
        }
        let thread = (ctx.meta.tgid, ctx.tid);
        if let Some(actives) = self.threads.get_mut(&thread) {
            actives.retain(|k| *k != key);
            if actives.is_empty() {
                self.threads.remove(&thread);
            }
        }
        if let Some(remote) = &ctx.carried {
            let rk = (ctx.meta.tgid, remote.span_id);
            if let Some(list) = self.received.get_mut(&rk) {
                list.retain(|k| *k != key);
                if list.is_empty() {
                    self.received.remove(&rk);
                }
            }
        }
    }

    /// Forgets a request once it has ended and is settled (nothing can wait for it any more).
    fn remove_if_done(&mut self, key: ReqKey) {
        if let Some(ctx) = self.ctxs.get(&key)
            && !ctx.active
            && ctx.held.is_none()
            && matches!(ctx.state, State::Settled(_))
        {
            self.ctxs.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests;
