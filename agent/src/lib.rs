//! The userspace half of the agent. Data path, one module per stage:
//! [`loader`] → [`capture`] → [`conn`] → [`protocol`] → [`trace`] → [`export`], wired by
//! [`pipeline`]. See docs/ARCHITECTURE.md.

pub mod btf;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod conn;
pub mod elf;
pub mod export;
pub mod loader;
pub mod pipeline;
pub mod process;
pub mod protocol;
pub mod stats;
pub mod trace;
