//! Connections of traced processes: one entry per live TCP connection, keyed by the process, its
//! fd and the kernel's socket identity, holding its 4-tuple, its role and one [`Stream`] per
//! direction, and handing the streams to the protocol parser.

mod connection;
pub mod stream;
pub mod table;

pub use stream::{Stream, SyscallTime};
pub use table::{
    ConnKey, ConnMeta, ConnRecord, ConnTable, Endpoint, Limits, Peer, Role, TlsMeta, Tuple,
};
