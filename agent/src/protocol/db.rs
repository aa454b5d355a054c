//! A database or cache operation as PostgreSQL, MySQL and Redis parsers report it: what was
//! asked (reduced, never with literal values), of which database, and how it ended.

use std::collections::HashMap;

use super::{
    Exchange, Record, Start,
    sql::{self, Dialect},
};
use crate::{conn::SyscallTime, stats::Stats, trace::propagation::Extracted};

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

/// One SQL call in progress, the span PostgreSQL's and MySQL's parsers build: the statement
/// as sent, and what the answers said so far.
#[derive(Debug)]
pub struct SqlUnit {
    pub query: Option<String>,
    pub first: SyscallTime,
    pub rows: u64,
    pub error: Option<DbError>,
}

impl SqlUnit {
    pub fn new(query: Option<String>, first: SyscallTime) -> Self {
        SqlUnit {
            query,
            first,
            rows: 0,
            error: None,
        }
    }

    /// The finished call's record: operation and table read from the statement, the statement
    /// itself reduced to literal-free text.
    pub fn finished(
        self,
        id: u64,
        system: System,
        dialect: Dialect,
        namespace: Option<String>,
        last: SyscallTime,
    ) -> Record {
        let (operation, collection) = self
            .query
            .as_deref()
            .map_or((None, None), |q| sql::describe(q, dialect));
        Record::finished(
            id,
            Exchange::Db(Operation {
                system,
                operation,
                collection,
                query: self.query.as_deref().map(|q| sql::sanitize(q, dialect)),
                namespace,
                error: self.error,
                rows: Some(self.rows),
                first: self.first,
                last,
            }),
        )
    }
}

/// Gives up every unit but `keep` (one whose answer was lost in a gap still ends), in id
/// order, counting them as unanswered.
pub fn abandon_units<U>(
    units: &mut HashMap<u64, U>,
    keep: Option<u64>,
    stats: &Stats,
    out: &mut Vec<Record>,
) {
    let mut ids: Vec<u64> = units
        .keys()
        .copied()
        .filter(|id| Some(*id) != keep)
        .collect();
    ids.sort_unstable();
    for id in &ids {
        units.remove(id);
    }
    stats.add(&stats.requests_unanswered, ids.len() as u64);
    out.extend(ids.into_iter().map(|id| Record::Abandoned { id }));
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
