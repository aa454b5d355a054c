//! Where an OTLP signal goes: endpoint and transport, from `--otlp-endpoint`/`--otlp-protocol`
//! or the standard variables, per signal (`OTEL_EXPORTER_OTLP_{TRACES,METRICS}_*` over
//! `OTEL_EXPORTER_OTLP_*`), resolved the same way for traces and metrics.

use anyhow::{Context as _, Result, bail};

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    /// Parses an `OTEL_EXPORTER_OTLP_PROTOCOL` value.
    pub fn parse(value: &str) -> Result<Self> {
        match value.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "http/json" => {
                bail!("OTLP protocol http/json is not supported; use grpc or http/protobuf")
            }
            other => bail!("unknown OTLP protocol {other:?}; use grpc or http/protobuf"),
        }
    }
}

/// An OTLP signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    fn upper(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
        }
    }

    /// The path OTLP/HTTP appends to a base endpoint.
    fn path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }

    /// `OTEL_{TRACES,METRICS}_EXPORTER`.
    fn exporter_variable(self) -> String {
        format!("OTEL_{}_EXPORTER", self.upper())
    }
}

/// A non-empty environment variable.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A numeric environment variable, with a clear error when it is not a number.
pub fn env_number(name: &str, default: u64) -> Result<u64> {
    match env(name) {
        Some(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        None => Ok(default),
    }
}

/// Where one signal goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub signal: Signal,
    /// Endpoint given on the command line (a base, like `OTEL_EXPORTER_OTLP_ENDPOINT`); `None`
    /// lets the exporter read the environment.
    pub endpoint: Option<String>,
    pub protocol: Protocol,
}

impl Target {
    /// The signal's target, or `None` when no endpoint is configured for it anywhere, or its
    /// `OTEL_*_EXPORTER` says `none`.
    pub fn resolve(
        signal: Signal,
        flag_endpoint: Option<&str>,
        flag_protocol: Option<&str>,
    ) -> Result<Option<Self>> {
        let upper = signal.upper();
        let env_endpoint = env(&format!("OTEL_EXPORTER_OTLP_{upper}_ENDPOINT"))
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
        let exporter = env(&signal.exporter_variable());
        let listed = |name: &str| {
            exporter
                .as_deref()
                .is_some_and(|e| e.split(',').any(|x| x.trim() == name))
        };
        if listed("none") {
            return Ok(None);
        }
        if flag_endpoint.is_none() && env_endpoint.is_none() && !listed("otlp") {
            return Ok(None);
        }
        let named = flag_protocol
            .map(str::to_string)
            .or_else(|| env(&format!("OTEL_EXPORTER_OTLP_{upper}_PROTOCOL")))
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"));
        let protocol = match named {
            Some(p) => Protocol::parse(&p)?,
            // The spec's default is http/protobuf; an endpoint on the gRPC port means gRPC.
            None => {
                let ep = flag_endpoint.map(str::to_string).or(env_endpoint);
                if ep
                    .as_deref()
                    .is_some_and(|e| e.trim_end_matches('/').ends_with(":4317"))
                {
                    Protocol::Grpc
                } else {
                    Protocol::HttpProtobuf
                }
            }
        };
        Ok(Some(Target {
            signal,
            endpoint: flag_endpoint.map(str::to_string),
            protocol,
        }))
    }

    /// The URL to give the exporter when the endpoint came from the command line: as with
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, OTLP/HTTP appends the signal's path.
    pub fn url(&self) -> Option<String> {
        let ep = self.endpoint.as_deref()?;
        Some(match self.protocol {
            Protocol::Grpc => ep.to_string(),
            Protocol::HttpProtobuf => format!("{}{}", ep.trim_end_matches('/'), self.signal.path()),
        })
    }

    /// The full URL requests go to, as the OTLP exporter specification resolves it: the
    /// command line's base endpoint, else `OTEL_EXPORTER_OTLP_{SIGNAL}_ENDPOINT` as given, else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (OTLP/HTTP appending the signal's path), else localhost on
    /// the protocol's port.
    pub fn resolved_url(&self) -> String {
        if let Some(url) = self.url() {
            return url;
        }
        if let Some(url) = env(&format!(
            "OTEL_EXPORTER_OTLP_{}_ENDPOINT",
            self.signal.upper()
        )) {
            return url.trim().to_string();
        }
        let base = env("OTEL_EXPORTER_OTLP_ENDPOINT").map(|e| e.trim().to_string());
        match self.protocol {
            Protocol::Grpc => base.unwrap_or_else(|| "http://localhost:4317".into()),
            Protocol::HttpProtobuf => format!(
                "{}{}",
                base.as_deref()
                    .unwrap_or("http://localhost:4318")
                    .trim_end_matches('/'),
                self.signal.path()
            ),
        }
    }

    /// Headers sent with every request: `OTEL_EXPORTER_OTLP_HEADERS`, then
    /// `OTEL_EXPORTER_OTLP_{SIGNAL}_HEADERS` (whose keys win), each `key=value,...` with
    /// percent-encoded keys and values.
    pub fn headers(&self) -> Result<Vec<(String, String)>> {
        let mut headers: Vec<(String, String)> = Vec::new();
        let signal = format!("OTEL_EXPORTER_OTLP_{}_HEADERS", self.signal.upper());
        for name in ["OTEL_EXPORTER_OTLP_HEADERS", signal.as_str()] {
            if let Some(list) = env(name) {
                add_headers(&mut headers, name, &list)?;
            }
        }
        Ok(headers)
    }

    /// How long one export may take: `OTEL_EXPORTER_OTLP_{SIGNAL}_TIMEOUT`, else
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`, in milliseconds; 10 s by default.
    pub fn timeout(&self) -> Result<std::time::Duration> {
        let signal = format!("OTEL_EXPORTER_OTLP_{}_TIMEOUT", self.signal.upper());
        let ms = match env(&signal) {
            Some(_) => env_number(&signal, 10_000)?,
            None => env_number("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000)?,
        };
        Ok(std::time::Duration::from_millis(ms.max(1)))
    }

    /// Refuses a compression the agent does not do, rather than sending what the collector would
    /// not expect.
    pub fn check_compression(&self) -> Result<()> {
        let signal = format!("OTEL_EXPORTER_OTLP_{}_COMPRESSION", self.signal.upper());
        match env(&signal).or_else(|| env("OTEL_EXPORTER_OTLP_COMPRESSION")) {
            None => Ok(()),
            Some(c) if c.trim() == "none" => Ok(()),
            Some(c) => bail!("OTLP compression {c:?} is not supported; use none"),
        }
    }

    /// A description for the start-up log.
    pub fn describe(&self) -> String {
        let ep = self
            .endpoint
            .clone()
            .or_else(|| {
                env(&format!(
                    "OTEL_EXPORTER_OTLP_{}_ENDPOINT",
                    self.signal.upper()
                ))
            })
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .unwrap_or_else(|| "default endpoint".into());
        format!("{ep} ({:?})", self.protocol)
    }
}

/// Adds the `key=value,...` pairs of the variable `name` to `headers`, replacing earlier values
/// of the same (case-insensitive) key.
fn add_headers(headers: &mut Vec<(String, String)>, name: &str, list: &str) -> Result<()> {
    for pair in list.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("{name}: {pair:?} is not key=value"))?;
        let k = crate::percent::decode(k.trim().as_bytes()).to_ascii_lowercase();
        let v = crate::percent::decode(v.trim().as_bytes());
        headers.retain(|(known, _)| *known != k);
        headers.push((k, v));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_headers_override_general_ones() {
        let mut h = Vec::new();
        add_headers(&mut h, "G", "Authorization=Basic%20abc, x-team = a ,").unwrap();
        add_headers(&mut h, "S", "x-TEAM=b").unwrap();
        assert_eq!(
            h,
            [
                ("authorization".to_string(), "Basic abc".to_string()),
                ("x-team".to_string(), "b".to_string())
            ]
        );
        let err = add_headers(&mut h, "S", "novalue").unwrap_err();
        assert!(err.to_string().contains("S: \"novalue\" is not key=value"));
    }

    #[test]
    fn header_lists_are_percent_decoded() {
        let mut h = Vec::new();
        add_headers(&mut h, "H", "x%20team=a%20b%3Dc, y=100%, z=%zz%4").unwrap();
        assert_eq!(
            h,
            [
                ("x team".to_string(), "a b=c".to_string()),
                ("y".to_string(), "100%".to_string()),
                ("z".to_string(), "%zz%4".to_string())
            ]
        );
    }

    #[test]
    fn http_endpoints_get_the_signal_path() {
        let target = |signal, protocol| Target {
            signal,
            endpoint: Some("http://collector:4318/".into()),
            protocol,
        };
        assert_eq!(
            target(Signal::Metrics, Protocol::HttpProtobuf)
                .url()
                .as_deref(),
            Some("http://collector:4318/v1/metrics")
        );
        assert_eq!(
            target(Signal::Traces, Protocol::HttpProtobuf)
                .url()
                .as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            target(Signal::Metrics, Protocol::Grpc).url().as_deref(),
            Some("http://collector:4318/")
        );
    }

    #[test]
    fn the_flag_endpoint_picks_the_protocol_by_port() {
        let t = Target::resolve(Signal::Metrics, Some("http://c:4317"), None)
            .unwrap()
            .unwrap();
        assert_eq!(t.protocol, Protocol::Grpc);
        let t = Target::resolve(Signal::Traces, Some("http://c:4318"), Some("grpc"))
            .unwrap()
            .unwrap();
        assert_eq!(t.protocol, Protocol::Grpc, "the flag wins");
        assert!(Target::resolve(Signal::Traces, Some("http://c"), Some("http/json")).is_err());
    }
}
