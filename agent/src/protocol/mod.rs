//! Protocol parsers. Each turns the byte streams of a connection into [`Record`]s, in the order
//! it learns things: a request has started (its head was read), it finished (with its response),
//! or it was abandoned. `trace` links started requests into traces and turns finished ones into
//! spans.
//!
//! [`detect`] recognises a connection's protocol from its first bytes (not its port):
//! HTTP/1.x ([`http1`]), HTTP/2 and gRPC ([`http2`]), PostgreSQL ([`postgres`]), MySQL and
//! MariaDB ([`mysql`]), Redis ([`redis`]). Database statements are reduced by [`sql`].

pub mod db;
pub mod detect;
#[cfg(test)]
pub mod harness;
pub mod http;
pub mod http1;
pub mod http2;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod sql;
pub mod wire;

use crate::{conn::SyscallTime, trace::propagation::Extracted};

/// A request whose head was just read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// Identifies the request within its connection.
    pub id: u64,
    /// The syscall that carried the request's first byte: its thread is the one serving
    /// (SERVER) or making (CLIENT) the request.
    pub first: SyscallTime,
    /// Trace context the request carries.
    pub context: Extracted,
    /// Hash of the request head; the two ends of one connection compute the same value for the
    /// same request, which links a client's span to its server's span on one host.
    pub fingerprint: u64,
    /// True when the thread that read (or wrote) the request's first byte is the one that
    /// handles it. False for multiplexed protocols (HTTP/2), whose bytes are moved by I/O
    /// threads serving many streams: such a SERVER request gives its thread no context.
    pub thread_affine: bool,
}

/// A finished exchange, of whichever protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// HTTP/1.x or HTTP/2 (gRPC included).
    Http(http::Exchange),
    /// A database or cache operation.
    Db(db::Operation),
}

/// What a parser reports about a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Started(Start),
    /// The request `id` got its response. Boxed: an exchange is three times the size of the
    /// other records, and every record of a batch would otherwise be moved at that size.
    Finished {
        id: u64,
        exchange: Box<Exchange>,
    },
    /// The request `id` will get no response (connection closed, framing lost, too many
    /// pending); it is counted as unanswered where this is emitted.
    Abandoned {
        id: u64,
    },
}

impl Record {
    /// The request `id` got its response: `exchange`.
    pub fn finished(id: u64, exchange: Exchange) -> Self {
        Record::Finished {
            id,
            exchange: Box::new(exchange),
        }
    }
}
