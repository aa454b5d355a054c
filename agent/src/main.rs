//! `agent`: parse the command line, set up logging, run the pipeline, and turn any failure into
//! one clear line on stderr with a non-zero exit.

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

/// Every traced request allocates (payload copies, headers, span attributes) on several
/// threads; mimalloc's thread-local free lists cost a fraction of glibc malloc's there (measured
/// with `cargo xtask bench`, docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let huge_pages = agent::memory::disable_huge_pages();
    let args = agent::cli::Args::parse();
    let config = match agent::config::Config::resolve(args) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("error: {err:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    if let Err(err) = huge_pages {
        tracing::warn!(%err, "transparent huge pages stay on: the agent's memory grows in 2 MiB steps");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(agent::pipeline::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
