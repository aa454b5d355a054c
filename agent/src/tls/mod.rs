//! Seeing inside TLS: uprobes on the TLS library each traced process maps (a shared `libssl`,
//! or OpenSSL/BoringSSL linked into the executable, as in Node.js) report the plaintext of
//! `SSL_read`/`SSL_write`, which then takes the same path as cleartext socket bytes
//! (`conn` → `protocol` → `trace`).
//!
//! - [`library`]: which mapped files are TLS libraries, and where their functions are;
//! - [`attach`]: a thread that owns the loaded eBPF object and attaches the probes per process
//!   and library, when a process becomes traced or maps a new executable file;
//! - [`hello`]: the cleartext handshake seen on the socket (TLS detection and version).

pub mod attach;
pub mod hello;
pub mod library;

pub use attach::Attacher;
