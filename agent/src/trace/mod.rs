//! From exchanges to spans: where each span sits in its trace ([`link`], from propagated
//! context ([`propagation`]), threads and connections), whether it is kept ([`sampler`]),
//! timing, and the OpenTelemetry semantic conventions of its protocol ([`http`] for HTTP and
//! gRPC, [`db`] for databases and caches). A SERVER span starts when the first request byte was
//! read and ends when the last response byte was written; a CLIENT span starts when the first
//! request byte was written and ends when the last response byte was read.

pub mod db;
pub mod http;
pub mod link;
pub mod propagation;
pub mod route;
pub mod sampler;
pub mod span;

use rand::Rng;
use std::{cell::RefCell, net::IpAddr};

use smol_str::{SmolStr, format_smolstr};

pub use link::{Link, Linker, Placement};
pub use span::{Span, SpanKind, Status, Value};

use crate::{
    clock,
    conn::{ConnMeta, Role, SyscallTime},
    process::Processes,
    protocol::Exchange,
};

/// Random non-zero W3C ids.
pub fn new_trace_id(rng: &mut impl Rng) -> [u8; 16] {
    loop {
        // One 128-bit draw: an array of bytes is drawn a byte (one generator step) at a time.
        let id = rng.random::<u128>().to_le_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

/// A random non-zero span id.
pub fn new_span_id(rng: &mut impl Rng) -> [u8; 8] {
    loop {
        let id = rng.random::<u64>().to_le_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

/// What a protocol says about its span: its name, attributes and whether it failed.
pub struct Described {
    pub name: SmolStr,
    pub attributes: Vec<(&'static str, Value)>,
    pub error: bool,
}

/// Addresses whose text is kept per thread (a power of two).
const IP_MEMO: usize = 64;
const _: () = assert!(IP_MEMO.is_power_of_two());

thread_local! {
    /// The text of recently named addresses, direct-mapped by a hash of the address.
    static IP_TEXTS: RefCell<[Option<(IpAddr, SmolStr)>; IP_MEMO]> =
        const { RefCell::new([const { None }; IP_MEMO]) };
}

/// An address as text. Every span names one or two, and a service's spans name the same few
/// peers over and over (its callers, a load balancer, its databases): writing one cost ~240
/// instructions, finding it in a small per-thread memo under a third of that.
pub fn ip_text(ip: IpAddr) -> SmolStr {
    let h = match ip {
        IpAddr::V4(v4) => u64::from(v4.to_bits()),
        IpAddr::V6(v6) => {
            let bits = v6.to_bits();
            (bits as u64) ^ ((bits >> 64) as u64)
        }
    };
    // The top bits of a multiplicative hash: as many as index the memo.
    let slot = (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - IP_MEMO.trailing_zeros())) as usize;
    IP_TEXTS.with_borrow_mut(|memo| match &memo[slot] {
        Some((known, text)) if *known == ip => text.clone(),
        _ => {
            let text = write_ip(ip);
            memo[slot] = Some((ip, text.clone()));
            text
        }
    })
}

/// The parts written one after another, without the formatting machinery: a span's
/// `url.full` and name, and a service-graph peer's `host:port`, are made per span, and
/// `format_smolstr!` cost ~400 instructions each. Assembled on the stack, so that a text too
/// long to be inline in a `SmolStr` is allocated once (`SmolStrBuilder` grew a `String` first).
pub fn concat(parts: &[&str]) -> SmolStr {
    let mut buf = [0u8; 256];
    let mut n = 0;
    for part in parts {
        let Some(dst) = buf.get_mut(n..n + part.len()) else {
            return SmolStr::from(parts.concat());
        };
        dst.copy_from_slice(part.as_bytes());
        n += part.len();
    }
    // SAFETY: whole `str`s copied end to end: valid UTF-8.
    SmolStr::new(unsafe { std::str::from_utf8_unchecked(&buf[..n]) })
}

/// An address written as text; IPv4 digit by digit, where the formatting machinery was a
/// measurable part of describing a span.
fn write_ip(ip: IpAddr) -> SmolStr {
    let IpAddr::V4(v4) = ip else {
        return format_smolstr!("{ip}");
    };
    let mut buf = [0u8; 15];
    let mut n = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            buf[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            buf[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + octet % 10;
        n += 1;
    }
    // Only ASCII digits and dots were written.
    SmolStr::new(std::str::from_utf8(&buf[..n]).unwrap_or_default())
}

/// Attributes every span has: the peer, and TLS when the connection has it. The opt-in
/// `network.transport` (always `tcp` here) and `network.type` (the peer address says it) are
/// left out: every attribute is bytes to encode, send and decode for each span, and these carry
/// nothing the span does not already say. `peer` is `ip_text` of the peer's address, which the
/// caller formats once as it often names the peer under another key too.
pub fn network_attributes(conn: &ConnMeta, peer: SmolStr, a: &mut Vec<(&'static str, Value)>) {
    a.push(("network.peer.address", Value::Str(peer)));
    a.push((
        "network.peer.port",
        Value::Int(i64::from(conn.peer.remote.port())),
    ));
    if let Some(tls) = conn.tls {
        a.push(("tls.protocol.name", Value::text("tls")));
        if let Some(v) = tls.version.and_then(|v| v.name()) {
            a.push(("tls.protocol.version", Value::text(v)));
        }
    }
}

/// Builds the span for one exchange, at its place in its trace. `wall_offset_ns` turns kernel
/// times into wall-clock times (`clock::WallClock`).
pub fn make_span(
    conn: &ConnMeta,
    exchange: &Exchange,
    placement: Placement,
    processes: &mut Processes,
    routes: &route::Routes,
    wall_offset_ns: u64,
) -> Span {
    let (first, last): (SyscallTime, SyscallTime) = match exchange {
        Exchange::Http(e) => (e.request.first, e.response.last),
        Exchange::Db(op) => (op.first, op.last),
    };
    let (kind, start_ns) = match conn.role {
        Role::Server => (SpanKind::Server, first.exit_ns),
        Role::Client => (SpanKind::Client, first.enter_ns),
    };
    let end_ns = last.exit_ns.max(start_ns);
    let mut d = match exchange {
        Exchange::Http(e) => http::describe(conn, kind, e, routes),
        Exchange::Db(op) => db::describe(conn, op),
    };
    if let Link::Propagated(format) = placement.link {
        // Which propagation format the trace context came from.
        d.attributes
            .push(("agent.propagation", Value::Str(format.as_str().into())));
    }
    Span {
        trace_id: placement.trace_id,
        span_id: placement.span_id,
        parent_span_id: placement.parent,
        parent_remote: placement.parent_remote,
        sampled: placement.sampled,
        trace_state: placement.trace_state,
        link: placement.link,
        kind,
        name: d.name,
        start_ns: clock::to_unix_ns(start_ns, wall_offset_ns),
        end_ns: clock::to_unix_ns(end_ns, wall_offset_ns),
        attributes: d.attributes,
        status: if d.error {
            Status::Error
        } else {
            Status::Unset
        },
        process: processes.get(conn.tgid),
    }
}

#[cfg(test)]
#[path = "span_tests.rs"]
mod tests;
