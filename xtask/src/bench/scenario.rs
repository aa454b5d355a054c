//! The services a benchmark drives: nginx serving a static file, and the realistic Python
//! service (front → backend over HTTP, and Redis), bare or under OpenTelemetry's SDK.

use std::{path::Path, process::Command};

use anyhow::Result;

use super::procs::{Spawned, free_port, wait_port};

/// nginx with one worker serving a small static file, in the foreground.
pub struct Nginx {
    pub server: Spawned,
    pub url: String,
}

impl Nginx {
    pub fn start(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        std::fs::write(dir.join("index.html"), "ok\n")?;
        let d = dir.display();
        let conf = format!(
            "daemon off;\nworker_processes 1;\nworker_rlimit_nofile 65536;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 16384; }}\nhttp {{\n  \
             access_log off;\n  \
             client_body_temp_path {d};\n  proxy_temp_path {d};\n  fastcgi_temp_path {d};\n  \
             uwsgi_temp_path {d};\n  scgi_temp_path {d};\n  server {{\n    \
             listen 127.0.0.1:{port};\n    root {d};\n  }}\n}}\n"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let server = Spawned::start(
            "nginx",
            Command::new("nginx")
                .arg("-c")
                .arg(&conf_path)
                .arg("-p")
                .arg(dir),
        )?;
        wait_port(port, "nginx")?;
        Ok(Nginx {
            server,
            url: format!("http://127.0.0.1:{port}/index.html"),
        })
    }
}

/// How the front service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Mode {
    /// No instrumentation at all.
    Bare,
    /// Traced by the agent.
    Agent,
    /// Instrumented by `opentelemetry-instrument` (the Python SDK's auto-instrumentation).
    Sdk,
}

/// Redis and the backend: started once per scenario.
pub struct PythonDeps {
    pub redis_port: u16,
    pub backend_port: u16,
    _redis: Spawned,
    _backend: Spawned,
}

impl PythonDeps {
    pub fn start(peers: &Path) -> Result<Self> {
        let redis_port = free_port()?;
        let redis = Spawned::start(
            "redis",
            Command::new("redis-server").args([
                "--port",
                &redis_port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ]),
        )?;
        let backend_port = free_port()?;
        let backend = Spawned::start(
            "backend",
            Command::new("python3")
                .arg(peers.join("bench_app.py"))
                .args(["back", &backend_port.to_string()]),
        )?;
        wait_port(redis_port, "redis")?;
        wait_port(backend_port, "backend")?;
        Ok(PythonDeps {
            redis_port,
            backend_port,
            _redis: redis,
            _backend: backend,
        })
    }

    /// Starts the front service (under the SDK for `Mode::Sdk`, exporting to `otlp_grpc`).
    pub fn front(&self, peers: &Path, mode: Mode, otlp_grpc: &str) -> Result<(Spawned, String)> {
        let port = free_port()?;
        let args = [
            "front".to_string(),
            port.to_string(),
            self.backend_port.to_string(),
            self.redis_port.to_string(),
        ];
        let app = peers.join("bench_app.py");
        let mut cmd = if mode == Mode::Sdk {
            let mut c = Command::new("opentelemetry-instrument");
            c.arg("python3")
                .env("OTEL_SERVICE_NAME", "bench-front")
                .env("OTEL_TRACES_EXPORTER", "otlp")
                .env("OTEL_METRICS_EXPORTER", "none")
                .env("OTEL_LOGS_EXPORTER", "none")
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_grpc)
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
            c
        } else {
            Command::new("python3")
        };
        cmd.arg(&app).args(&args);
        let front = Spawned::start("front", &mut cmd)?;
        wait_port(port, "front service")?;
        Ok((front, format!("http://127.0.0.1:{port}/item/{{n}}")))
    }
}
