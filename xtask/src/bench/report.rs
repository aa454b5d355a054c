//! The benchmark's report: one row per measurement, medians per scenario and mode, ratios
//! against the bare run, the budgets, a markdown table and a JSON file.

use std::path::Path;

use anyhow::Result;

use super::{agent::Cost, scenario::Mode, wrk::Outcome};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub scenario: String,
    pub mode: Mode,
    pub round: u32,
    pub load: Outcome,
    pub agent: Option<Cost>,
}

impl Row {
    pub fn new(scenario: &str, mode: Mode, round: u32, load: Outcome, agent: Option<Cost>) -> Self {
        Row {
            scenario: scenario.to_string(),
            mode,
            round,
            load,
            agent,
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians of one scenario and mode.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Summary {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    cpu_us_per_request: f64,
    kernel_ns_per_event: f64,
    kernel_us_per_request: f64,
    peak_rss_mib: f64,
    events_lost: u64,
    requests_without_span: u64,
}

fn summarize(rows: &[&Row]) -> Summary {
    let load = |f: fn(&Outcome) -> f64| median(rows.iter().map(|r| f(&r.load)).collect());
    let cost = |f: fn(&Cost) -> f64| {
        median(
            rows.iter()
                .filter_map(|r| r.agent.as_ref().map(f))
                .collect(),
        )
    };
    let sum = |f: fn(&Cost) -> u64| rows.iter().filter_map(|r| r.agent.as_ref().map(f)).sum();
    Summary {
        rps: load(|o| o.rps),
        p50_us: load(|o| o.p50_us),
        p99_us: load(|o| o.p99_us),
        errors: rows.iter().map(|r| r.load.errors).sum(),
        cpu_us_per_request: cost(|c| c.cpu_us_per_request),
        kernel_ns_per_event: cost(|c| c.kernel_ns_per_event),
        kernel_us_per_request: cost(|c| c.kernel_us_per_request),
        peak_rss_mib: cost(|c| c.peak_rss_mib),
        events_lost: sum(|c| c.events_lost),
        requests_without_span: sum(|c| c.requests_without_span),
    }
}

fn fmt(v: f64, digits: usize) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:.digits$}")
    }
}

/// Prints the table and budgets; writes `results.md` and `results.json` into `dir`.
pub fn print_and_save(rows: &[Row], dir: &Path) -> Result<()> {
    let mut scenarios: Vec<&str> = rows.iter().map(|r| r.scenario.as_str()).collect();
    scenarios.dedup();
    let mut md = String::from(
        "| scenario | mode | req/s | vs bare | p50 (µs) | p99 (µs) | agent CPU µs/req | kernel ns/event | kernel µs/req | agent peak RSS MiB | lost | requests without span |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut budgets = Vec::new();
    let mut summaries = Vec::new();
    for scenario in scenarios {
        let of = |mode: Mode| -> Vec<&Row> {
            rows.iter()
                .filter(|r| r.scenario == scenario && r.mode == mode)
                .collect()
        };
        let bare = summarize(&of(Mode::Bare));
        for mode in [Mode::Bare, Mode::Agent, Mode::Sdk] {
            let these = of(mode);
            if these.is_empty() {
                continue;
            }
            let s = summarize(&these);
            let ratio = s.rps / bare.rps;
            md.push_str(&format!(
                "| {scenario} | {mode:?} | {} | {}% | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                fmt(s.rps, 0),
                fmt((ratio - 1.0) * 100.0, 1),
                fmt(s.p50_us, 0),
                fmt(s.p99_us, 0),
                fmt(s.cpu_us_per_request, 2),
                fmt(s.kernel_ns_per_event, 0),
                fmt(s.kernel_us_per_request, 2),
                fmt(s.peak_rss_mib, 1),
                if mode == Mode::Agent {
                    s.events_lost.to_string()
                } else {
                    "–".into()
                },
                if mode == Mode::Agent {
                    s.requests_without_span.to_string()
                } else {
                    "–".into()
                },
            ));
            summaries.push(serde_json::json!({
                "scenario": scenario, "mode": mode, "summary": s, "throughput_ratio": ratio,
            }));
            if mode == Mode::Agent {
                budgets.extend(check(scenario, &bare, &s, &summarize(&of(Mode::Sdk))));
            }
        }
    }
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    md.push_str(&format!(
        "\nCommit {commit}. Medians over rounds; lost and missing spans are totals.\n\nBudgets:\n"
    ));
    for b in &budgets {
        md.push_str(&format!("- {b}\n"));
    }
    println!("{md}");
    std::fs::write(dir.join("results.md"), &md)?;
    let json = serde_json::json!({ "commit": commit, "rows": rows, "summaries": summaries });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    eprintln!("written: {}/results.md and results.json", dir.display());
    Ok(())
}

/// The budgets of docs/BENCHMARKS.md that apply to a scenario, each marked met or missed.
fn check(scenario: &str, bare: &Summary, agent: &Summary, sdk: &Summary) -> Vec<String> {
    let loss = (1.0 - agent.rps / bare.rps) * 100.0;
    let mark = |ok: bool| if ok { "met" } else { "MISSED" };
    let mut out = Vec::new();
    if scenario.starts_with("nginx") {
        out.push(format!(
            "{scenario}: throughput loss {loss:.1}% ≤ 10%: {}",
            mark(loss <= 10.0)
        ));
    } else {
        let added_p99 = agent.p99_us - bare.p99_us;
        out.push(format!(
            "{scenario}: throughput loss {loss:.1}% ≤ 1%: {}",
            mark(loss <= 1.0)
        ));
        out.push(format!(
            "{scenario}: p99 added {added_p99:.0} µs ≤ 50 µs: {}",
            mark(added_p99 <= 50.0)
        ));
        if !sdk.rps.is_nan() {
            let sdk_loss = (1.0 - sdk.rps / bare.rps) * 100.0;
            out.push(format!(
                "{scenario}: overhead below the OpenTelemetry SDK's ({loss:.1}% vs {sdk_loss:.1}%): {}",
                mark(loss < sdk_loss)
            ));
        }
    }
    out.push(format!(
        "{scenario}: agent CPU {:.2} µs/request ≤ 2 µs: {}",
        agent.cpu_us_per_request,
        mark(agent.cpu_us_per_request <= 2.0)
    ));
    if scenario.contains("10k-connections") {
        out.push(format!(
            "{scenario}: agent peak RSS {:.1} MiB ≤ 64 MiB at 10k connections: {}",
            agent.peak_rss_mib,
            mark(agent.peak_rss_mib <= 64.0)
        ));
    }
    out.push(format!(
        "{scenario}: no request without a span ({}), no silent loss ({} counted): {}",
        agent.requests_without_span,
        agent.events_lost,
        mark(agent.requests_without_span == 0)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }
}
