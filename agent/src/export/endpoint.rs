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

#[cfg(test)]
mod tests {
    use super::*;

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
