//! The OpenTelemetry database semantic conventions for an operation: span name
//! `{db.operation.name} {db.collection.name}` (or the operation alone, or the system),
//! `db.*` attributes, and ERROR status when the server answered with an error.

use smol_str::SmolStr;

use super::{Described, Value, network_attributes};
use crate::{conn::ConnMeta, protocol::db::Operation};

/// Describes one database operation (always a CLIENT span).
pub fn describe(conn: &ConnMeta, op: &Operation) -> Described {
    let mut a: Vec<(&'static str, Value)> = Vec::with_capacity(14);
    let s = |v: &str| Value::Str(SmolStr::new(v));
    a.push(("db.system.name", Value::text(op.system.as_str())));
    if let Some(o) = &op.operation {
        a.push(("db.operation.name", s(o)));
    }
    if let Some(c) = &op.collection {
        a.push(("db.collection.name", s(c)));
    }
    if let Some(ns) = &op.namespace {
        a.push(("db.namespace", s(ns)));
    }
    if let Some(q) = &op.query {
        a.push(("db.query.text", s(q)));
    }
    if let Some(rows) = op.rows {
        a.push(("db.response.returned_rows", Value::Int(rows as i64)));
    }
    if let Some(e) = &op.error {
        a.push(("db.response.status_code", s(&e.code)));
        a.push(("error.type", s(&e.code)));
    }
    let peer = super::ip_text(conn.peer.remote.ip());
    a.push(("server.address", Value::Str(peer.clone())));
    a.push((
        "server.port",
        Value::Int(i64::from(conn.peer.remote.port())),
    ));
    network_attributes(conn, peer, &mut a);
    let name = match (&op.operation, &op.collection) {
        (Some(o), Some(c)) => super::concat(&[o, " ", c]),
        (Some(o), None) => SmolStr::new(o),
        _ => SmolStr::new_static(op.system.as_str()),
    };
    Described {
        name,
        attributes: a,
        error: op.error.is_some(),
    }
}
