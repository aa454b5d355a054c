//! Real database servers for the tests, from Debian's packages: a private PostgreSQL cluster,
//! MariaDB instance or Redis server on a free loopback port, with its data in a temporary
//! directory, stopped when dropped.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use crate::{Proc, free_port, workspace};

/// A scratch directory under target/, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = workspace().join(format!("target/e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (cargo xtask setup installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "{what} did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A PostgreSQL cluster (Debian's packaged major version) with a database `shop` (trust authentication on loopback).
pub struct Postgres {
    pub port: u16,
    _server: Proc,
    _dir: TempDir,
}

/// The newest packaged PostgreSQL's binaries (`/usr/lib/postgresql/MAJOR/bin`).
fn pg_bin() -> PathBuf {
    let mut majors: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("postgresql is installed (cargo xtask setup)")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    majors.sort();
    let major = majors.last().expect("a PostgreSQL major version");
    PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"))
}

impl Postgres {
    pub fn start() -> Self {
        let dir = TempDir::new("pg");
        let data = dir.0.join("data");
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir.0));
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin().join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data));
        let port = free_port();
        let server = Proc::spawn(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg_bin().join("postgres"))
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
                .arg("-k")
                .arg(&dir.0),
        );
        wait_until("postgres", || {
            Command::new(pg_bin().join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        run(Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(["-c", "CREATE DATABASE shop"]));
        Postgres {
            port,
            _server: server,
            _dir: dir,
        }
    }
}

/// A MariaDB server with a database `shop` and a user `shop`/`shop`.
pub struct Mariadb {
    pub port: u16,
    _server: Proc,
    _dir: TempDir,
}

impl Mariadb {
    pub fn start() -> Self {
        let dir = TempDir::new("mariadb");
        let data = dir.0.join("data");
        let socket = dir.0.join("mysqld.sock");
        run(Command::new("mariadb-install-db")
            .args(["--user=root", "--auth-root-authentication-method=socket"])
            .arg(format!("--datadir={}", data.display())));
        let port = free_port();
        let server = Proc::spawn(
            Command::new("mariadbd")
                .args(["--no-defaults", "--user=root", "--bind-address=127.0.0.1"])
                .arg(format!("--port={port}"))
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--pid-file={}", dir.0.join("pid").display())),
        );
        wait_until("mariadb", || {
            Command::new("mariadb-admin")
                .arg(format!("--socket={}", socket.display()))
                .arg("ping")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        run(Command::new("mariadb")
            .arg(format!("--socket={}", socket.display()))
            .args([
                "-e",
                "DELETE FROM mysql.user WHERE User = ''; FLUSH PRIVILEGES; \
                 CREATE DATABASE shop; \
                 CREATE USER 'shop'@'%' IDENTIFIED BY 'shop'; \
                 CREATE USER 'shop'@'localhost' IDENTIFIED BY 'shop'; \
                 GRANT ALL ON shop.* TO 'shop'@'%'; GRANT ALL ON shop.* TO 'shop'@'localhost';",
            ]));
        Mariadb {
            port,
            _server: server,
            _dir: dir,
        }
    }
}

/// A Redis server without persistence.
pub struct Redis {
    pub port: u16,
    _server: Proc,
}

impl Redis {
    pub fn start() -> Self {
        let port = free_port();
        let server = Proc::spawn(Command::new("redis-server").args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]));
        wait_until("redis", || {
            Command::new("redis-cli")
                .args(["-p", &port.to_string(), "ping"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
        });
        Redis {
            port,
            _server: server,
        }
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1, made by `openssl` for one test.
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: TempDir,
}

impl Cert {
    pub fn new() -> Self {
        let dir = TempDir::new("cert");
        let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        Cert {
            cert,
            key,
            _dir: dir,
        }
    }
}

impl Default for Cert {
    fn default() -> Self {
        Self::new()
    }
}

/// nginx on a free port, in the foreground (`daemon off`: the master is this process, its
/// worker a child), serving the files of its directory (and a plain `return` for `/missing`).
pub struct Nginx {
    pub port: u16,
    pub server: Proc,
    _dir: TempDir,
}

impl Nginx {
    /// HTTPS, HTTP/1.1 or HTTP/2 by ALPN; `/index.html` holds a line.
    pub fn start_tls(cert: &Cert) -> Self {
        let listen = format!(
            "ssl http2;\n    ssl_certificate {c};\n    ssl_certificate_key {k}",
            c = cert.cert.display(),
            k = cert.key.display(),
        );
        Self::start(&listen, &[("index.html", b"hello from nginx\n")])
    }

    /// Plain HTTP/1.1 with `sendfile on`: static files go out by `sendfile(2)`, their bytes
    /// never in the worker's memory. `files` are (name, contents).
    pub fn start_plain(files: &[(&str, &[u8])]) -> Self {
        Self::start("", files)
    }

    fn start(listen: &str, files: &[(&str, &[u8])]) -> Self {
        let dir = TempDir::new("nginx");
        let port = free_port();
        for (name, contents) in files {
            std::fs::write(dir.0.join(name), contents).expect("nginx file");
        }
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  client_body_temp_path {d};\n  \
             proxy_temp_path {d};\n  fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  \
             scgi_temp_path {d};\n  server {{\n    listen 127.0.0.1:{port} {listen};\n    \
             root {d};\n    location /missing {{ return 404; }}\n  }}\n}}\n",
            d = dir.0.display(),
        );
        let conf_path = dir.0.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let server = Proc::spawn(
            Command::new("nginx")
                .arg("-c")
                .arg(&conf_path)
                .arg("-p")
                .arg(&dir.0),
        );
        crate::wait_port(port);
        Nginx {
            port,
            server,
            _dir: dir,
        }
    }
}
