//! Protocol parsers. Each turns the byte streams of a connection into [`Record`]s, in the order
//! it learns things: a request has started (its head was read), it finished (with its response),
//! or it was abandoned. `trace` links started requests into traces and turns finished ones into
//! spans. HTTP/1.x is the only protocol so far.

pub mod http1;

pub use http1::Exchange;

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
}

/// What a parser reports about a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Started(Start),
    /// The request `id` got its response.
    Finished {
        id: u64,
        exchange: Exchange,
    },
    /// The request `id` will get no response (connection closed, framing lost, too many
    /// pending); it is counted as unanswered where this is emitted.
    Abandoned {
        id: u64,
    },
}
