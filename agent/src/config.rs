//! The agent's settings: command-line flags over an optional YAML file (`--config`), resolved
//! once at start-up into a [`Config`]. Selectors of both are combined.
//!
//! ```yaml
//! select:            # any of these, combined
//!   - exe: "python3*"
//!   - port: 8080
//!   - pid: 4242
//!   - container: 4f6a1e0b9c2d
//!   - all: true
//! exclude:
//!   - exe: "/usr/sbin/sshd"
//! otlp_endpoint: http://otel-collector:4317
//! otlp_protocol: grpc
//! prometheus_port: 9400
//! ui: 127.0.0.1:8090
//! metric_series_limit: 2000
//! routes:            # http.route patterns, tried before the {id} reduction
//!   - /users/{name}
//!   - /static/*
//! kubernetes: auto
//! capture_bytes: 4096
//! ring_buffer_mib: 8       # default: 1 MiB per CPU, 4 to 64
//! format: text
//! log: info
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use crate::{
    cli::{self, Args, Format},
    k8s,
    select::{ExeGlob, Selection, Selector},
    trace::route::Routes,
};

/// One selector as written in the file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SelectorSpec {
    Pid(u32),
    Exe(String),
    Port(u16),
    Container(String),
    All(bool),
}

/// The YAML file. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// `- pid: 1` style entries (a one-key map per selector).
    #[serde(default, with = "serde_yaml::with::singleton_map_recursive")]
    pub select: Vec<SelectorSpec>,
    #[serde(default, with = "serde_yaml::with::singleton_map_recursive")]
    pub exclude: Vec<SelectorSpec>,
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: Option<String>,
    pub format: Option<Format>,
    pub capture_bytes: Option<u32>,
    pub ring_buffer_mib: Option<u32>,
    pub prometheus_port: Option<u16>,
    pub ui: Option<std::net::SocketAddr>,
    pub metric_series_limit: Option<u32>,
    #[serde(default)]
    pub routes: Vec<String>,
    pub kubernetes: Option<k8s::Mode>,
    pub kubeconfig: Option<PathBuf>,
    pub node_name: Option<String>,
    pub btf: Option<PathBuf>,
    pub log: Option<String>,
}

impl File {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        if text.trim().is_empty() {
            return Ok(File::default());
        }
        Ok(serde_yaml::from_str(text)?)
    }
}

/// Everything the agent runs with.
#[derive(Debug)]
pub struct Config {
    pub selection: Selection,
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: Option<String>,
    pub format: Format,
    pub capture_bytes: u32,
    pub ring_buffer_mib: u32,
    pub prometheus_port: Option<u16>,
    pub ui: Option<std::net::SocketAddr>,
    pub metric_series_limit: usize,
    pub routes: Routes,
    pub kubernetes: k8s::Options,
    pub btf: PathBuf,
    /// `--syscall-tracepoints`.
    pub syscall_tracepoints: bool,
    pub log: String,
}

fn selector(spec: &SelectorSpec) -> Result<Option<Selector>> {
    Ok(Some(match spec {
        SelectorSpec::Pid(p) => Selector::Pid(*p),
        SelectorSpec::Exe(g) => Selector::Exe(ExeGlob::new(g)?),
        SelectorSpec::Port(p) => Selector::port(*p)?,
        SelectorSpec::Container(c) => Selector::container(c)?,
        SelectorSpec::All(true) => Selector::All,
        SelectorSpec::All(false) => return Ok(None),
    }))
}

fn selectors(
    pids: &[u32],
    exes: &[String],
    ports: &[u16],
    containers: &[String],
    file: &[SelectorSpec],
) -> Result<Vec<Selector>> {
    let mut out: Vec<Selector> = pids.iter().map(|p| Selector::Pid(*p)).collect();
    for g in exes {
        out.push(Selector::Exe(ExeGlob::new(g)?));
    }
    for p in ports {
        out.push(Selector::port(*p)?);
    }
    for c in containers {
        out.push(Selector::container(c)?);
    }
    for spec in file {
        out.extend(selector(spec)?);
    }
    Ok(out)
}

/// `OTEL_METRICS_EXPORTER=prometheus` asks for the Prometheus endpoint, on
/// `OTEL_EXPORTER_PROMETHEUS_PORT` or the specification's default, 9464.
fn prometheus_from_env() -> Option<u16> {
    let exporters = std::env::var("OTEL_METRICS_EXPORTER").ok()?;
    exporters
        .split(',')
        .any(|e| e.trim() == "prometheus")
        .then(|| {
            std::env::var("OTEL_EXPORTER_PROMETHEUS_PORT")
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(9464)
        })
}

impl Config {
    /// Flags over the file (read when `--config` is given).
    pub fn resolve(args: Args) -> Result<Self> {
        let file = match &args.config {
            Some(path) => File::read(path)?,
            None => File::default(),
        };
        Self::merge(args, file)
    }

    pub fn merge(args: Args, file: File) -> Result<Self> {
        let mut include = selectors(
            &args.pids,
            &args.exes,
            &args.ports,
            &args.containers,
            &file.select,
        )?;
        if args.all {
            include.push(Selector::All);
        }
        let exclude = selectors(
            &args.exclude_pids,
            &args.exclude_exes,
            &[],
            &args.exclude_containers,
            &file.exclude,
        )?;
        let selection = Selection { include, exclude };
        selection.validate()?;
        let capture_bytes = args.capture_bytes.or(file.capture_bytes).unwrap_or(4096);
        if !(64..=4096).contains(&capture_bytes) {
            bail!("capture_bytes {capture_bytes} must be between 64 and 4096");
        }
        let ring_buffer_mib = cli::check_ring_size(
            args.ring_buffer_mib
                .or(file.ring_buffer_mib)
                .unwrap_or_else(|| default_ring_mib(host_cpus())),
        )
        .map_err(anyhow::Error::msg)?;
        // Flags first: they are tried before the file's patterns.
        let route_texts: Vec<String> = args.routes.into_iter().chain(file.routes).collect();
        let routes = Routes::parse(&route_texts).context("invalid --route")?;
        Ok(Config {
            selection,
            routes,
            otlp_endpoint: args.otlp_endpoint.or(file.otlp_endpoint),
            otlp_protocol: args.otlp_protocol.or(file.otlp_protocol),
            format: args.format.or(file.format).unwrap_or(Format::Text),
            capture_bytes,
            ring_buffer_mib,
            prometheus_port: args
                .prometheus_port
                .or(file.prometheus_port)
                .or_else(prometheus_from_env),
            ui: args.ui.or(file.ui),
            metric_series_limit: args
                .metric_series_limit
                .or(file.metric_series_limit)
                .map_or(crate::metrics::DEFAULT_SERIES_LIMIT, |n| n.max(1) as usize),
            kubernetes: k8s::Options {
                mode: args
                    .kubernetes
                    .or(file.kubernetes)
                    .unwrap_or(k8s::Mode::Auto),
                kubeconfig: args.kubeconfig.or(file.kubeconfig),
                node: args.node_name.or(file.node_name),
            },
            btf: args
                .btf
                .or(file.btf)
                .unwrap_or_else(|| PathBuf::from(crate::btf::VMLINUX)),
            syscall_tracepoints: args.syscall_tracepoints,
            log: args.log.or(file.log).unwrap_or_else(|| "info".into()),
        })
    }
}

/// The ring buffer's default size: 1 MiB per CPU of the host (every CPU's syscalls write into
/// the one ring), as a power of two between 4 and 64 MiB. The reader is woken at 512 KiB queued
/// (or a ride-along window after its last wake-up) and keeps the ring nearly empty (under 1 MiB at nginx
/// saturation on 2 CPUs), so the size is headroom for the reader falling behind: 4 MiB holds
/// nearly a third of a second of a 2-CPU host at 23k requests/s (two records of ~260 bytes
/// each). Its pages are resident and mapped twice, so each MiB here is 2 MiB of the agent's RSS.
fn default_ring_mib(cpus: usize) -> u32 {
    let cpus = u32::try_from(cpus).unwrap_or(u32::MAX);
    cpus.clamp(4, 64).next_power_of_two().min(64)
}

/// Online CPUs of the host: not of the agent's cgroup, as the ring takes every CPU's records,
/// and not the "possible" ones, which a VM may declare by the hundred for hot-plugging.
fn host_cpus() -> usize {
    aya::util::online_cpus().map_or(8, |cpus| cpus.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
select:
  - exe: "python3*"
  - port: 8080
  - pid: 4242
  - container: 4f6a1e0b9c2d
  - all: false
exclude:
  - exe: "/usr/sbin/sshd"
otlp_endpoint: http://collector:4317
prometheus_port: 9400
ui: 127.0.0.1:8090
metric_series_limit: 500
routes:
  - /users/{name}
kubernetes: "off"
capture_bytes: 1024
format: json
"#;

    #[test]
    fn file_and_flags_merge() {
        let file = File::parse(EXAMPLE).unwrap();
        assert_eq!(file.select.len(), 5);
        let args = Args {
            pids: vec![1],
            capture_bytes: Some(512),
            ..Args::default()
        };
        let c = Config::merge(args, file).unwrap();
        assert_eq!(
            c.selection.include.len(),
            5,
            "4 from the file (all: false is none) + 1"
        );
        assert_eq!(c.selection.exclude.len(), 1);
        assert_eq!(c.capture_bytes, 512, "the flag wins");
        assert_eq!(c.format, Format::Json);
        assert_eq!(c.prometheus_port, Some(9400));
        assert_eq!(c.routes.route("/users/bob"), "/users/{name}");
        assert_eq!(c.ui, Some("127.0.0.1:8090".parse().unwrap()));
        assert_eq!(c.metric_series_limit, 500);
        assert_eq!(c.kubernetes.mode, k8s::Mode::Off);
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://collector:4317"));
        assert_eq!(c.ring_buffer_mib, default_ring_mib(host_cpus()));
        assert_eq!(default_ring_mib(1), 4);
        assert_eq!(default_ring_mib(2), 4);
        assert_eq!(default_ring_mib(6), 8);
        assert_eq!(default_ring_mib(48), 64);
        assert_eq!(default_ring_mib(512), 64);
        assert_eq!(c.log, "info");
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let unknown = File::parse("selcet:\n  - pid: 1\n").unwrap_err();
        assert!(format!("{unknown:#}").contains("selcet"), "{unknown:#}");
        assert!(File::parse("select:\n  - user: root\n").is_err());
        let empty = Config::merge(Args::default(), File::parse("").unwrap()).unwrap_err();
        assert!(format!("{empty}").contains("nothing to trace"));
        let glob = Config::merge(
            Args::default(),
            File::parse("select:\n  - exe: \"[\"\n").unwrap(),
        )
        .unwrap_err();
        assert!(format!("{glob}").contains("glob"));
        let big = Config::merge(
            Args {
                all: true,
                ..Args::default()
            },
            File::parse("capture_bytes: 100000\n").unwrap(),
        )
        .unwrap_err();
        assert!(format!("{big}").contains("capture_bytes"));
        let route = Config::merge(
            Args {
                all: true,
                routes: vec!["users/{id}".into()],
                ..Args::default()
            },
            File::default(),
        )
        .unwrap_err();
        assert!(
            format!("{route:#}").contains("must start with '/'"),
            "{route:#}"
        );
    }

    #[test]
    fn shipped_example_config_parses() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/base/agent.yaml");
        let file = File::read(&path).unwrap();
        let c = Config::merge(Args::default(), file).unwrap();
        assert!(!c.selection.include.is_empty());
    }
}
