//! Protocol parsers. Each turns the byte streams of a connection into request/response
//! exchanges; `trace` turns exchanges into spans. HTTP/1.x is the only protocol so far.

pub mod http1;
