//! A database or cache operation as PostgreSQL, MySQL and Redis parsers report it: what was
//! asked (reduced, never with literal values), of which database, and how it ended.

use super::{Record, Start};
use crate::{conn::SyscallTime, trace::propagation::Extracted};

/// The record of a database or cache call whose request's first byte was written at `first`:
/// no trace context travels in these protocols, and the calling thread waits for the answer
/// (thread-affine), so the call is linked under what that thread serves.
pub fn started(id: u64, first: SyscallTime) -> Record {
    Record::Started(Start {
        id,
        first,
        context: Extracted::None,
        fingerprint: 0,
        thread_affine: true,
    })
}

/// `db.system.name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    Postgresql,
    Mysql,
    Mariadb,
    Redis,
}

impl System {
    pub fn as_str(self) -> &'static str {
        match self {
            System::Postgresql => "postgresql",
            System::Mysql => "mysql",
            System::Mariadb => "mariadb",
            System::Redis => "redis",
        }
    }
}

/// An error the server answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbError {
    /// `db.response.status_code`: SQLSTATE (PostgreSQL), error number (MySQL), error prefix
    /// (Redis: `ERR`, `WRONGTYPE`, ...).
    pub code: String,
    pub message: String,
}

/// One operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub system: System,
    /// `db.operation.name`: `SELECT`, `INSERT`, `GET`, ...
    pub operation: Option<String>,
    /// `db.collection.name`: the table (or key space), when the statement names one plainly.
    pub collection: Option<String>,
    /// `db.query.text`, with every literal replaced by `?`.
    pub query: Option<String>,
    /// `db.namespace`: the database (PostgreSQL, MySQL) or database index (Redis).
    pub namespace: Option<String>,
    pub error: Option<DbError>,
    /// Rows returned, when counted (`db.response.returned_rows`).
    pub rows: Option<u64>,
    /// The syscall that sent the request's first byte.
    pub first: SyscallTime,
    /// The syscall that received the response's last byte.
    pub last: SyscallTime,
}
