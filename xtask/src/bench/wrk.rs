//! Load generation with `wrk` and the numbers it reports.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

/// How hard to drive the target.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// As fast as the target answers, with this many connections.
    Saturate { connections: u32 },
    /// Each of `connections` waits `delay_ms` between requests (a roughly fixed rate).
    Fixed { connections: u32, delay_ms: u32 },
}

/// What one wrk run measured.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Outcome {
    pub requests: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Socket errors, timeouts and non-2xx/3xx responses.
    pub errors: u64,
}

/// Runs wrk against `url` (its path may contain `{n}`, replaced per request).
pub fn run(peers: &Path, url: &str, load: Load, duration: Duration) -> Result<Outcome> {
    let (base, path) = split(url);
    let (connections, delay) = match load {
        Load::Saturate { connections } => (connections, 0),
        Load::Fixed {
            connections,
            delay_ms,
        } => (connections, delay_ms),
    };
    let out = Command::new("wrk")
        .args(["-t", "2", "-c", &connections.to_string()])
        .args(["-d", &format!("{}s", duration.as_secs())])
        .args(["--latency", "--timeout", "5s", "-s"])
        .arg(peers.join("load.lua"))
        .arg(base)
        .env("BENCH_PATH", path)
        .env("DELAY_MS", delay.to_string())
        .output()
        .context("running wrk (cargo xtask setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    parse(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

fn split(url: &str) -> (&str, &str) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => url.split_at(after_scheme + i),
        None => (url, "/"),
    }
}

/// Parses wrk's report: latency distribution, request totals, errors.
pub fn parse(text: &str) -> Option<Outcome> {
    let mut o = Outcome::default();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => o.p50_us = micros(v)?,
            ["99%", v] => o.p99_us = micros(v)?,
            [n, "requests", "in", secs, ..] => {
                o.requests = n.parse().ok()?;
                o.seconds = secs
                    .trim_end_matches(',')
                    .trim_end_matches('s')
                    .parse()
                    .ok()?;
            }
            ["Requests/sec:", v] => o.rps = v.parse().ok()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => o.errors += n.parse::<u64>().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                o.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    (o.requests > 0).then_some(o)
}

/// "1.23ms", "950.00us", "2.01s" → microseconds.
fn micros(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        return None;
    };
    Some(num.parse::<f64>().ok()? * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_report() {
        let text = "Running 10s test @ http://127.0.0.1:8080/\n  2 threads and 50 connections\n  \
            Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.10ms  300.00us  \
            12.00ms   90.00%\n  Latency Distribution\n     50%  850.00us\n     75%    1.20ms\n     \
            90%    1.60ms\n     99%    3.20ms\n  412345 requests in 10.00s, 60.00MB read\n  \
            Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\n\
            Requests/sec:  41234.50\nTransfer/sec:      6.00MB\n";
        let o = parse(text).unwrap();
        assert_eq!(o.requests, 412_345);
        assert_eq!(o.seconds, 10.0);
        assert_eq!(o.rps, 41_234.5);
        assert_eq!(o.p50_us, 850.0);
        assert_eq!(o.p99_us, 3_200.0);
        assert_eq!(o.errors, 7);
        assert!(parse("garbage").is_none());
        assert_eq!(split("http://h:1/a/{n}"), ("http://h:1", "/a/{n}"));
        assert_eq!(split("http://h:1"), ("http://h:1", "/"));
    }
}
