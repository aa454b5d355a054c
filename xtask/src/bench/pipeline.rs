//! The userspace pipeline alone (`agent/benches/pipeline/`), on each of its workloads,
//! measured twice: in nanoseconds per request (the benchmark's own table), and in instructions
//! per request, counted by callgrind. Time is what a user pays, but on a shared 2-vCPU machine it swings by more than
//! most single changes save; the instruction count of the same code on the same input is
//! exact, so it tells whether a change removed work at all.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail, ensure};

/// The benchmark's stages, in the order it runs them (each run goes one stage further).
const STAGES: [&str; 4] = [
    "decode + conn + http1",
    "+ trace (link, span)",
    "+ metrics",
    "+ export (OTLP encoding)",
];

/// The benchmark's workloads (`PIPELINE_WORKLOAD`): nginx's server side, and a service whose
/// requests each make two client calls (HTTP and Redis).
const WORKLOADS: [&str; 2] = ["nginx", "service"];

/// Runs the benchmark on each workload, then counts its instructions; prints the tables and
/// writes them to `pipeline.md` under `work`.
pub fn run(work: &Path) -> Result<()> {
    let exe = executable()?;
    let mut report = String::new();
    for workload in WORKLOADS {
        // The executable cargo built, as `cargo bench` would run it.
        let out = Command::new(&exe)
            .arg("--bench")
            .env("PIPELINE_WORKLOAD", workload)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        ensure!(
            out.status.success(),
            "the pipeline benchmark failed ({workload})"
        );
        let timed = String::from_utf8_lossy(&out.stdout).into_owned();
        let requests = requests_per_run(&timed)?;
        println!("\n{timed}");
        let counted = instructions(&exe, work, workload, requests)?;
        println!("\n{counted}");
        report.push_str(&timed);
        report.push('\n');
        report.push_str(&counted);
        report.push('\n');
    }
    std::fs::write(work.join("pipeline.md"), report.as_bytes())?;
    Ok(())
}

/// The requests of one run, from the benchmark's heading ("..., 50000 requests a run, ...").
fn requests_per_run(heading: &str) -> Result<u64> {
    heading
        .split(", ")
        .find_map(|part| part.strip_suffix(" requests a run"))
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .context("the pipeline benchmark's heading does not say how many requests a run has")
}

/// The benchmark's executable, as cargo reports it.
fn executable() -> Result<PathBuf> {
    let out = crate::cargo()
        .args([
            "bench",
            "--package",
            "agent",
            "--bench",
            "pipeline",
            "--no-run",
        ])
        .args(["--message-format", "json"])
        .stderr(Stdio::inherit())
        .output()
        .context("building the pipeline benchmark")?;
    ensure!(
        out.status.success(),
        "building the pipeline benchmark failed"
    );
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["name"] == "pipeline"
            && let Some(path) = msg["executable"].as_str()
        {
            return Ok(PathBuf::from(path));
        }
    }
    bail!("cargo did not name the pipeline benchmark's executable")
}

/// One run of each stage under callgrind, counting only inside the benchmark's `run` and
/// dumping the count after each call: dump `i` is stage `i`'s whole run.
fn instructions(exe: &Path, work: &Path, workload: &str, requests: u64) -> Result<String> {
    let base = work.join(format!("pipeline-{workload}.callgrind"));
    for i in 0..=STAGES.len() {
        let _ = std::fs::remove_file(dump(&base, i));
    }
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", base.display()))
        .args([
            "--toggle-collect=pipeline::run",
            "--dump-after=pipeline::run",
        ])
        .arg(exe)
        .arg("--bench")
        .env("PIPELINE_RUNS", "1")
        .env("PIPELINE_WORKLOAD", workload)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running valgrind (`cargo xtask bench` installs it)")?;
    ensure!(
        status.success(),
        "callgrind failed on the pipeline benchmark ({workload})"
    );
    let mut table = format!(
        "instructions per request, {workload} (callgrind, one run of each stage)\n\
         | stage | instructions/request | step |\n|---|---:|---:|\n",
    );
    let mut previous = 0;
    for (i, stage) in STAGES.iter().enumerate() {
        let path = dump(&base, i + 1);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let per_request = total(&text)
            .with_context(|| format!("no instruction total in {}", path.display()))?
            / requests;
        let step = per_request as i64 - previous as i64;
        writeln!(table, "| {stage} | {per_request} | {step:+} |")?;
        previous = per_request;
    }
    Ok(table)
}

/// Callgrind's file for dump `i` (0: the final one, at exit).
fn dump(base: &Path, i: usize) -> PathBuf {
    if i == 0 {
        base.to_path_buf()
    } else {
        PathBuf::from(format!("{}.{i}", base.display()))
    }
}

/// The event total of a callgrind dump (`summary:` or `totals:`, first event: instructions).
fn total(dump: &str) -> Option<u64> {
    dump.lines()
        .find_map(|l| l.strip_prefix("summary:").or(l.strip_prefix("totals:")))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_heading_and_the_totals() {
        let heading = "userspace pipeline, nginx-like HTTP/1.1 exchanges on 50 connections, \
                       50000 requests a run, fastest of 11 runs";
        assert_eq!(requests_per_run(heading).unwrap(), 50_000);
        assert!(requests_per_run("no count here").is_err());
        assert_eq!(
            total("events: Ir\nsummary: 1029643110\n"),
            Some(1_029_643_110)
        );
        assert_eq!(total("events: Ir\ntotals: 77\n"), Some(77));
        assert_eq!(total("events: Ir\n"), None);
    }
}
