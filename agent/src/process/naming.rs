//! `service.name` and the other resource attributes a process asks for.
//!
//! The order, first found wins: the process's own `OTEL_SERVICE_NAME`; `service.name` inside its
//! `OTEL_RESOURCE_ATTRIBUTES`; the Kubernetes label `app.kubernetes.io/name` of its pod; the name
//! of the workload that owns the pod (Deployment, StatefulSet, DaemonSet, CronJob, Job); the
//! executable's name. The other entries of `OTEL_RESOURCE_ATTRIBUTES` are kept as resource
//! attributes, as an OpenTelemetry SDK in the process would keep them.

/// Where a process's `service.name` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSource {
    OtelServiceName,
    ResourceAttributes,
    KubernetesLabel,
    KubernetesWorkload,
    Executable,
}

/// Decodes `%XX` escapes (the W3C Baggage encoding `OTEL_RESOURCE_ATTRIBUTES` uses); an invalid
/// escape is kept as written.
fn percent_decode(s: &str) -> String {
    crate::percent::decode(s.as_bytes())
}

/// Parses `key=value,key2=value2`; entries without `=` or with an empty key are skipped.
pub fn resource_attributes(value: &str) -> Vec<(String, String)> {
    value
        .split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let k = percent_decode(k.trim());
            (!k.is_empty()).then(|| (k, percent_decode(v.trim())))
        })
        .collect()
}

/// The candidates for a process's service name, in no particular order.
#[derive(Debug, Default, Clone, Copy)]
pub struct Candidates<'a> {
    pub otel_service_name: Option<&'a str>,
    pub resource_service_name: Option<&'a str>,
    pub k8s_app_label: Option<&'a str>,
    pub k8s_workload: Option<&'a str>,
    pub executable: &'a str,
}

/// Applies the order above.
pub fn service_name(c: Candidates<'_>) -> (String, NameSource) {
    let pick = [
        (c.otel_service_name, NameSource::OtelServiceName),
        (c.resource_service_name, NameSource::ResourceAttributes),
        (c.k8s_app_label, NameSource::KubernetesLabel),
        (c.k8s_workload, NameSource::KubernetesWorkload),
    ];
    for (value, source) in pick {
        if let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) {
            return (v.to_string(), source);
        }
    }
    (c.executable.to_string(), NameSource::Executable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_resource_attributes_with_escapes() {
        let attrs = resource_attributes(
            "service.name=cart%20api, deployment.environment=prod,team=a%2Cb,broken,=x,k=",
        );
        assert_eq!(
            attrs,
            vec![
                ("service.name".to_string(), "cart api".to_string()),
                ("deployment.environment".into(), "prod".into()),
                ("team".into(), "a,b".into()),
                ("k".into(), "".into()),
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn order_of_sources_each_present_and_absent() {
        let all = Candidates {
            otel_service_name: Some("from-env"),
            resource_service_name: Some("from-attrs"),
            k8s_app_label: Some("from-label"),
            k8s_workload: Some("from-workload"),
            executable: "python3",
        };
        assert_eq!(
            service_name(all),
            ("from-env".into(), NameSource::OtelServiceName)
        );
        let c = Candidates {
            otel_service_name: None,
            ..all
        };
        assert_eq!(service_name(c).1, NameSource::ResourceAttributes);
        let c = Candidates {
            resource_service_name: Some("  "),
            ..c
        };
        assert_eq!(
            service_name(c),
            ("from-label".into(), NameSource::KubernetesLabel)
        );
        let c = Candidates {
            k8s_app_label: None,
            ..c
        };
        assert_eq!(
            service_name(c),
            ("from-workload".into(), NameSource::KubernetesWorkload)
        );
        let c = Candidates {
            k8s_workload: None,
            ..c
        };
        assert_eq!(service_name(c), ("python3".into(), NameSource::Executable));
    }
}
