//! The service map as a table on the terminal: printed when the agent exits and on `SIGUSR1`,
//! so a first run without any backend still ends with who called whom, how often, how slowly
//! and how often it failed.

use std::fmt::Write as _;

use super::{EdgeStats, graph::Edge};

fn ms(seconds: Option<f64>) -> String {
    match seconds {
        Some(s) if s < 0.01 => format!("{:.2}ms", s * 1000.0),
        Some(s) => format!("{:.1}ms", s * 1000.0),
        None => "-".into(),
    }
}

/// The table, busiest edges first; empty when nothing was seen.
pub fn table(edges: &[(Edge, EdgeStats)]) -> String {
    if edges.is_empty() {
        return String::new();
    }
    let mut rows: Vec<[String; 7]> = edges
        .iter()
        .map(|(e, s)| {
            let name = |n: &str| {
                if n.is_empty() {
                    "(overflow)".to_string()
                } else {
                    n.to_string()
                }
            };
            let h = s.latency();
            let errors = if s.requests == 0 {
                0.0
            } else {
                100.0 * s.failed as f64 / s.requests as f64
            };
            [
                name(&e.client),
                name(&e.server),
                if e.connection_type.is_empty() {
                    "-".into()
                } else {
                    e.connection_type.to_string()
                },
                s.requests.to_string(),
                format!("{} ({errors:.1}%)", s.failed),
                ms(h.quantile(0.5)),
                ms(h.quantile(0.95)),
            ]
        })
        .collect();
    rows.sort_by(|a, b| {
        let n = |r: &[String; 7]| r[3].parse::<u64>().unwrap_or(0);
        n(b).cmp(&n(a)).then_with(|| a[..2].cmp(&b[..2]))
    });
    let header = [
        "CLIENT", "SERVER", "TYPE", "REQUESTS", "ERRORS", "P50", "P95",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::from("service map (since start):\n");
    let line = |out: &mut String, cells: &[&str]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            // Names left, numbers right.
            if i < 3 {
                let _ = write!(l, "{c:<w$}  ");
            } else {
                let _ = write!(l, "{c:>w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut out, &header);
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&mut out, &cells);
    }
    out
}
