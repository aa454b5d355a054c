//! RED metrics and the service map from a real three-service chain (threaded Python services,
//! uninstrumented) in front of a real PostgreSQL: the Prometheus endpoint and the OTLP metrics a
//! real receiver gets show the edges, counts equal to the requests sent, error counts equal to
//! the failures injected, and routes reduced to `/users/{id}`; the web view, loaded in headless
//! Chromium, draws the same nodes and edges.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use agent_e2e::{
    Agent, Proc, eventually, free_port, http_get,
    metrics::{RecvPoint, latest},
    peer, pid_args,
    receiver::Receiver,
    servers::Postgres,
    wait_ready, workspace,
};

/// Requests sent through the chain; every fifth fails in the last service.
const REQUESTS: u64 = 20;
const FAILURES: u64 = REQUESTS / 5;

/// frontend → checkout → users → PostgreSQL.
struct Chain {
    pg: Postgres,
    front_port: u16,
    procs: Vec<Proc>,
}

impl Chain {
    fn start() -> Chain {
        let pg = Postgres::start();
        let ports = [free_port(), free_port(), free_port()];
        let service = |name: &str, port: u16, rest: Vec<String>| {
            let p = Proc::spawn(
                Command::new("python3")
                    .arg(peer("map_service.py"))
                    .arg(port.to_string())
                    .args(rest)
                    .env("OTEL_SERVICE_NAME", name),
            );
            wait_ready(&p, name);
            p
        };
        let next = |port: u16| vec![format!("http://127.0.0.1:{port}")];
        let users = service("users", ports[2], vec!["--pg".into(), pg.port.to_string()]);
        let checkout = service("checkout", ports[1], next(ports[2]));
        let frontend = service("frontend", ports[0], next(ports[1]));
        Chain {
            pg,
            front_port: ports[0],
            procs: vec![frontend, checkout, users],
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }

    /// Sends `GET /users/{n}`; every fifth n fails.
    fn get(&self, n: u64) -> u16 {
        let (status, _) = http_get("127.0.0.1", self.front_port, &format!("/users/{n}"), &[]);
        status
    }

    fn db(&self) -> String {
        format!("127.0.0.1:{}", self.pg.port)
    }
}

/// Sums the samples of `name` whose labels include `labels`.
fn prom(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((body, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let found: BTreeMap<&str, &str> = body
            .split("\",")
            .filter_map(|kv| kv.split_once("=\""))
            .map(|(k, v)| (k, v.trim_end_matches('"')))
            .collect();
        if labels.iter().all(|(k, v)| found.get(k) == Some(v)) {
            sum += value.trim().parse::<f64>().unwrap_or(f64::NAN);
        }
    }
    sum
}

fn scrape(port: u16) -> String {
    http_get("127.0.0.1", port, "/metrics", &[]).1
}

fn edge<'a>(client: &'a str, server: &'a str) -> [(&'a str, &'a str); 2] {
    [("client", client), ("server", server)]
}

/// The latest cumulative value of `name` summed over the series that match.
fn otlp_total(points: &[RecvPoint], name: &str, keep: impl Fn(&RecvPoint) -> bool) -> f64 {
    latest(points, name)
        .values()
        .filter(|p| keep(p))
        .map(|p| p.value)
        .sum()
}

#[test]
fn service_graph_and_red_metrics_over_prometheus_and_otlp_grpc() {
    service_graph_and_red_metrics(Receiver::grpc());
}

#[test]
fn service_graph_and_red_metrics_over_prometheus_and_otlp_http() {
    service_graph_and_red_metrics(Receiver::http());
}

fn service_graph_and_red_metrics(rx: Receiver) {
    let chain = Chain::start();
    let prom_port = free_port();
    let mut args = pid_args(&chain.pids());
    args.extend([
        "--otlp-endpoint".into(),
        rx.endpoint.clone(),
        "--otlp-protocol".into(),
        rx.protocol.into(),
        "--prometheus-port".into(),
        prom_port.to_string(),
    ]);
    let agent = Agent::start(
        &args,
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    );
    for n in 1..=REQUESTS {
        let want = if n % 5 == 0 { 502 } else { 200 };
        assert_eq!(chain.get(n), want, "/users/{n}");
    }

    // Every request crosses four edges; the last pairs settle within the pairing wait.
    let text = eventually(Duration::from_secs(20), || {
        let t = scrape(prom_port);
        let total = |c: &str, s: &str| prom(&t, "traces_service_graph_request_total", &edge(c, s));
        let db = chain.db();
        let done = total("127.0.0.1", "frontend") == REQUESTS as f64
            && total("frontend", "checkout") == REQUESTS as f64
            && total("checkout", "users") == REQUESTS as f64
            && total("users", &db) == REQUESTS as f64;
        done.then_some(t)
    })
    .unwrap_or_else(|| panic!("service graph incomplete:\n{}", scrape(prom_port)));
    let failed = |c: &str, s: &str| {
        prom(
            &text,
            "traces_service_graph_request_failed_total",
            &edge(c, s),
        )
    };
    for (c, s) in [
        ("127.0.0.1", "frontend"),
        ("frontend", "checkout"),
        ("checkout", "users"),
    ] {
        assert_eq!(failed(c, s), FAILURES as f64, "{c} -> {s}:\n{text}");
        // Both ends traced: the client's and the server's view of every request.
        let count = |side: &str| {
            prom(
                &text,
                &format!("traces_service_graph_request_{side}_seconds_count"),
                &edge(c, s),
            )
        };
        assert_eq!(count("server"), REQUESTS as f64, "{c} -> {s}");
        if c != "127.0.0.1" {
            assert_eq!(count("client"), REQUESTS as f64, "{c} -> {s}");
        }
    }
    let db = chain.db();
    assert_eq!(failed("users", &db), 0.0);
    assert_eq!(
        prom(
            &text,
            "traces_service_graph_request_total",
            &[("server", &db), ("connection_type", "database")]
        ),
        REQUESTS as f64
    );
    // No edge the chain did not make.
    let edges = text
        .lines()
        .filter(|l| l.starts_with("traces_service_graph_request_total{"))
        .count();
    assert_eq!(edges, 4, "{text}");

    // RED: routes reduced, counts and errors per service.
    for service in ["frontend", "checkout", "users"] {
        let labels = [("service_name", service), ("http_route", "/users/{id}")];
        let name = "http_server_request_duration_seconds_count";
        assert_eq!(
            prom(&text, name, &labels),
            REQUESTS as f64,
            "{service}:\n{text}"
        );
        let status = if service == "users" { "500" } else { "502" };
        assert_eq!(
            prom(
                &text,
                name,
                &[
                    ("service_name", service),
                    ("http_response_status_code", status),
                    ("error_type", status)
                ]
            ),
            FAILURES as f64,
            "{service}"
        );
    }
    assert_eq!(
        prom(
            &text,
            "http_client_request_duration_seconds_count",
            &[("service_name", "frontend")]
        ),
        REQUESTS as f64
    );
    assert_eq!(
        prom(
            &text,
            "db_client_operation_duration_seconds_count",
            &[
                ("service_name", "users"),
                ("db_system_name", "postgresql"),
                ("db_operation_name", "SELECT"),
                ("db_collection_name", "users"),
            ]
        ),
        REQUESTS as f64,
        "{text}"
    );
    assert!(
        text.contains("agent_metric_series_overflow_total 0"),
        "{text}"
    );

    let (_, stderr) = agent.stop();
    // SERVER spans are named by route.
    let spans = rx.spans();
    let named = spans
        .iter()
        .filter(|s| s.kind == 2 && s.name == "GET /users/{id}")
        .count();
    assert_eq!(named, 3 * REQUESTS as usize, "{stderr:#?}");

    let summary = stderr.join("\n");
    assert!(summary.contains("service map"), "{summary}");
    assert!(
        stderr
            .iter()
            .any(|l| l.starts_with("frontend") && l.contains("checkout") && l.contains("20")),
        "{summary}"
    );

    // The same graph over OTLP, with the last export made at shutdown.
    let points = rx.points();
    let graph = |c: &str, s: &str, name: &str| {
        otlp_total(&points, name, |p| {
            p.attr("client") == Some(c) && p.attr("server") == Some(s)
        })
    };
    for (c, s) in [("frontend", "checkout"), ("checkout", "users")] {
        assert_eq!(
            graph(c, s, "traces_service_graph_request_total"),
            REQUESTS as f64
        );
        assert_eq!(
            graph(c, s, "traces_service_graph_request_failed_total"),
            FAILURES as f64
        );
        assert_eq!(
            graph(c, s, "traces_service_graph_request_client_seconds"),
            REQUESTS as f64
        );
    }
    assert_eq!(
        graph("users", &db, "traces_service_graph_request_total"),
        REQUESTS as f64
    );
    for service in ["frontend", "checkout", "users"] {
        let n = otlp_total(&points, "http.server.request.duration", |p| {
            p.service() == service && p.attr("http.route") == Some("/users/{id}")
        });
        assert_eq!(n, REQUESTS as f64, "{service}");
        let unit = points
            .iter()
            .find(|p| p.name == "http.server.request.duration")
            .map(|p| p.unit.clone());
        assert_eq!(unit.as_deref(), Some("s"));
    }
    let queries = otlp_total(&points, "db.client.operation.duration", |p| {
        p.service() == "users" && p.attr("db.operation.name") == Some("SELECT")
    });
    assert_eq!(queries, REQUESTS as f64);
    let rpc_or_http_client = otlp_total(&points, "http.client.request.duration", |p| {
        p.service() == "checkout"
    });
    assert_eq!(rpc_or_http_client, REQUESTS as f64);
}

/// Where test artefacts (the screenshot) are kept.
fn artefacts() -> PathBuf {
    let dir = workspace().join("target/e2e-artefacts");
    std::fs::create_dir_all(&dir).expect("artefact directory");
    dir
}

/// Runs headless Chromium on `url` with `args`; returns its stdout.
fn chromium(url: &str, args: &[&str]) -> String {
    let profile = tempdir("chromium-profile");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--virtual-time-budget=6000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs (cargo xtask setup installs it)");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("agent-e2e-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn web_view_draws_the_live_map_in_headless_chromium() {
    let chain = Arc::new(Chain::start());
    let ui_port = free_port();
    let mut args = pid_args(&chain.pids());
    args.extend(["--ui".into(), format!("127.0.0.1:{ui_port}")]);
    let agent = Agent::start(&args, &[]);
    agent.wait_log(&["web view", &ui_port.to_string()]);

    // Traffic flows while the page loads.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (chain, stop) = (chain.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 1;
            while !stop.load(Ordering::Relaxed) {
                chain.get(n);
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let db = chain.db();
    eventually(Duration::from_secs(20), || {
        let (_, map) = http_get("127.0.0.1", ui_port, "/api/map", &[]);
        (map.contains("\"client\":\"checkout\"") && map.contains(&db)).then_some(())
    })
    .expect("the map has the chain's edges");

    let url = format!("http://127.0.0.1:{ui_port}/");
    let dom = chromium(&url, &["--dump-dom"]);
    for node in ["frontend", "checkout", "users", "127.0.0.1", db.as_str()] {
        assert!(
            dom.contains(&format!("data-node=\"{node}\"")),
            "node {node}:\n{dom}"
        );
    }
    assert!(dom.contains(&format!("data-node=\"{db}\" data-kind=\"database\"")));
    assert!(dom.contains("data-node=\"users\" data-kind=\"service\""));
    for (c, s) in [
        ("127.0.0.1", "frontend"),
        ("frontend", "checkout"),
        ("checkout", "users"),
        ("users", db.as_str()),
    ] {
        let needle = format!("data-client=\"{c}\" data-server=\"{s}\"");
        assert!(dom.contains(&needle), "edge {c} -> {s}:\n{dom}");
    }
    // The lists are filled from the recent traces.
    assert!(dom.contains("GET /users/{id}"), "{dom}");
    assert!(
        dom.contains("class=\"trace error\""),
        "failed traces listed:\n{dom}"
    );

    // A failed trace's waterfall, opened the way a click opens it (the address says which).
    let (_, lists) = http_get("127.0.0.1", ui_port, "/api/traces", &[]);
    let lists: serde_json::Value = serde_json::from_str(&lists).expect("traces JSON");
    let failed = lists["failed"][0]["trace_id"]
        .as_str()
        .expect("a failed trace")
        .to_string();
    let url = format!("{url}#trace={failed}");
    let dom = chromium(&url, &["--dump-dom"]);
    let rows = dom.matches("class=\"bar-row\"").count();
    assert_eq!(rows, 6, "three SERVER and three CLIENT spans:\n{dom}");
    assert!(dom.contains("class=\"bar SERVER error\""), "{dom}");
    assert!(
        dom.contains("db.query.text=SELECT name FROM users WHERE id = ?"),
        "{dom}"
    );

    let shot = artefacts().join("service-map.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,1100",
        ],
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    assert!(
        png.len() > 20_000,
        "a drawn page, not a blank one ({} bytes)",
        png.len()
    );

    stop.store(true, Ordering::Relaxed);
    traffic.join().expect("traffic");
    agent.stop();
}
