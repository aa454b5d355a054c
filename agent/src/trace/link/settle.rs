//! Settling: once a request's parent has its place in a trace, the request takes its own, its
//! finished span is emitted, and whatever waited on it settles in turn. Also the same-host
//! meeting of a SERVER request and the traced CLIENT request that sent it.

use smol_str::SmolStr;

use super::{ClientEntry, Link, Linker, Placement, ReqKey, Settled, State, Tuple, Via};
use crate::{
    conn::Role,
    process::Processes,
    stats::Stats,
    trace::{Span, make_span, propagation::Remote},
};

impl Linker {
    /// After a SERVER ctx is inserted: if it links to a client that is still pending, register
    /// it as that client's child; if it is settled, nothing waits on it yet.
    pub(super) fn link_waiting_children(
        &mut self,
        key: ReqKey,
        processes: &mut Processes,
        stats: &Stats,
        out: &mut Vec<Span>,
    ) {
        let parent = match self.ctxs.get(&key).map(|c| &c.state) {
            Some(State::AwaitParent { parent, .. }) => *parent,
            _ => return,
        };
        self.adopt(parent, key, processes, stats, out);
    }

    /// The inbound request a CLIENT request belongs to, if that is certain.
    pub(super) fn client_parent(
        &mut self,
        tgid: u32,
        tid: u32,
        carried: Option<&Remote>,
        processes: &mut Processes,
        stats: &Stats,
    ) -> Option<(ReqKey, Via)> {
        if self.thread_linkable(tgid, processes)
            && let Some(actives) = self.threads.get(&(tgid, tid))
        {
            match actives.as_slice() {
                [one] => {
                    stats.inc(&stats.spans_linked_thread);
                    return Some((*one, Via::Thread));
                }
                [] => {}
                _ => stats.inc(&stats.link_ambiguous),
            }
        }
        let remote = carried?;
        match self.received.get(&(tgid, remote.span_id))?.as_slice() {
            [one]
                if self
                    .ctxs
                    .get(one)
                    .and_then(|c| c.carried.as_ref())
                    .is_some_and(|c| c.trace_id == remote.trace_id) =>
            {
                stats.inc(&stats.spans_linked_forwarded);
                Some((*one, Via::Forwarded))
            }
            _ => None,
        }
    }

    /// Makes `child` wait for `parent`, or settles it at once when the parent is settled.
    pub(super) fn adopt(
        &mut self,
        parent: ReqKey,
        child: ReqKey,
        processes: &mut Processes,
        stats: &Stats,
        out: &mut Vec<Span>,
    ) {
        let settled = match self.ctxs.get_mut(&parent) {
            Some(p) => match &p.state {
                State::Settled(s) => Some((s.clone(), p.span_id, p.carried.clone())),
                _ => {
                    p.children.push(child);
                    None
                }
            },
            // The parent is gone (it cannot be, while a child may still join it): settle alone.
            None => {
                self.settle_alone(child, processes, stats, out);
                return;
            }
        };
        if let Some((s, span_id, carried)) = settled {
            self.settle_child(child, &s, span_id, carried.as_ref(), processes, stats, out);
        }
    }

    /// Settles a child from its settled parent.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn settle_child(
        &mut self,
        child: ReqKey,
        parent: &Settled,
        parent_span: [u8; 8],
        parent_carried: Option<&Remote>,
        processes: &mut Processes,
        stats: &Stats,
        out: &mut Vec<Span>,
    ) {
        let Some(ctx) = self.ctxs.get(&child) else {
            return;
        };
        let via = match ctx.state {
            State::AwaitParent { via, .. } => via,
            _ => return,
        };
        let settled = match via {
            Via::Peer => self.peer_child(parent, parent_span),
            Via::Thread | Via::Forwarded => {
                let link = if matches!(via, Via::Thread) {
                    Link::Thread
                } else {
                    Link::Forwarded
                };
                match &ctx.carried {
                    // The application started a trace of its own for this call.
                    Some(r) if r.trace_id != parent.trace_id => Settled {
                        parent: None,
                        parent_remote: false,
                        ..self.under_remote(r)
                    },
                    Some(r) => Settled {
                        trace_id: parent.trace_id,
                        parent: Some(parent_span),
                        parent_remote: false,
                        sampled: self.sampler.sample(&r.trace_id, Some(r.sampled)),
                        trace_state: if r.trace_state.is_empty()
                            && parent_carried.is_some_and(|pc| pc.span_id == r.span_id)
                        {
                            parent.trace_state.clone()
                        } else {
                            SmolStr::new(&r.trace_state)
                        },
                        link,
                    },
                    None => Settled {
                        trace_id: parent.trace_id,
                        parent: Some(parent_span),
                        parent_remote: false,
                        sampled: self.sampler.sample_child(&parent.trace_id, parent.sampled),
                        trace_state: parent.trace_state.clone(),
                        link,
                    },
                }
            }
        };
        self.settle(child, settled, processes, stats, out);
    }

    /// A SERVER span under a CLIENT span of another traced process.
    pub(super) fn peer_child(&self, client: &Settled, client_span: [u8; 8]) -> Settled {
        Settled {
            trace_id: client.trace_id,
            parent: Some(client_span),
            parent_remote: true,
            sampled: self.sampler.sample_child(&client.trace_id, client.sampled),
            trace_state: client.trace_state.clone(),
            link: Link::Peer,
        }
    }

    /// Settles a request from what it carries alone (its peer never showed, or its parent
    /// vanished).
    pub(super) fn settle_alone(
        &mut self,
        key: ReqKey,
        processes: &mut Processes,
        stats: &Stats,
        out: &mut Vec<Span>,
    ) {
        let Some(ctx) = self.ctxs.get(&key) else {
            return;
        };
        let settled = match &ctx.carried {
            Some(remote) => self.under_remote(remote),
            None => self.root(),
        };
        self.settle(key, settled, processes, stats, out);
    }

    /// Records a placement and settles everything that waited for it.
    pub(super) fn settle(
        &mut self,
        key: ReqKey,
        settled: Settled,
        processes: &mut Processes,
        stats: &Stats,
        out: &mut Vec<Span>,
    ) {
        let Some(ctx) = self.ctxs.get_mut(&key) else {
            return;
        };
        ctx.state = State::Settled(settled);
        self.on_settled(key, processes, stats, out);
    }

    /// A request just settled: emit its span if it finished, update its client entry, and settle
    /// its children.
    pub(super) fn on_settled(
        &mut self,
        key: ReqKey,
        processes: &mut Processes,
        stats: &Stats,
        out: &mut Vec<Span>,
    ) {
        let Some(ctx) = self.ctxs.get_mut(&key) else {
            return;
        };
        let State::Settled(settled) = &ctx.state else {
            return;
        };
        let settled = settled.clone();
        let span_id = ctx.span_id;
        let carried = ctx.carried.clone();
        let children = std::mem::take(&mut ctx.children);
        if let Some(exchange) = ctx.held.take() {
            let meta = ctx.meta;
            out.push(make_span(
                &meta,
                &exchange,
                placement(&settled, span_id),
                processes,
                &self.routes,
                self.clock.offset_ns(),
            ));
        }
        if ctx.meta.role == Role::Client {
            let tuple = ctx.meta.peer.tuple(Role::Client);
            if let Some(entry) = self
                .clients
                .get_mut(&tuple)
                // From the back: a request usually settles as it starts, just after its
                // entry was pushed, and a connection keeps up to 64 entries.
                .and_then(|q| q.iter_mut().rev().find(|e| e.key == key))
            {
                entry.settled = Some(settled.clone());
            }
        }
        for child in children {
            self.settle_child(
                child,
                &settled,
                span_id,
                carried.as_ref(),
                processes,
                stats,
                out,
            );
        }
        self.remove_if_done(key);
    }

    /// A new CLIENT request: a SERVER request of this host may be waiting for it.
    pub(super) fn match_waiting_server(
        &mut self,
        tuple: Tuple,
        client: ReqKey,
        processes: &mut Processes,
        stats: &Stats,
        out: &mut Vec<Span>,
    ) {
        let Some(fingerprint) = self.ctxs.get(&client).map(|c| c.fingerprint) else {
            return;
        };
        let Some(queue) = self.waiting.get_mut(&tuple) else {
            return;
        };
        let Some(pos) = queue.iter().position(|k| {
            self.ctxs
                .get(k)
                .is_some_and(|c| c.fingerprint == fingerprint)
        }) else {
            return;
        };
        let Some(server) = queue.remove(pos) else {
            return;
        };
        // The client's entry is consumed by this server.
        if let Some(q) = self.clients.get_mut(&tuple) {
            q.retain(|e| e.key != client);
        }
        stats.inc(&stats.spans_linked_peer);
        if let Some(ctx) = self.ctxs.get_mut(&server) {
            ctx.state = State::AwaitParent {
                parent: client,
                via: Via::Peer,
            };
        }
        self.adopt(client, server, processes, stats, out);
    }

    /// The oldest unconsumed CLIENT request of a connection with this fingerprint; older
    /// entries that do not match are stale (their server end never parsed them) and dropped.
    pub(super) fn take_client_entry(
        &mut self,
        tuple: Tuple,
        fingerprint: u64,
    ) -> Option<ClientEntry> {
        let queue = self.clients.get_mut(&tuple)?;
        let pos = queue.iter().position(|e| e.fingerprint == fingerprint)?;
        queue.drain(..pos);
        queue.pop_front()
    }
}

/// The placement of a settled request's span.
pub(super) fn placement(s: &Settled, span_id: [u8; 8]) -> Placement {
    Placement {
        trace_id: s.trace_id,
        span_id,
        parent: s.parent,
        parent_remote: s.parent_remote,
        sampled: s.sampled,
        trace_state: s.trace_state.clone(),
        link: s.link,
    }
}
