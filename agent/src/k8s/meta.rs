//! What the agent keeps of a pod: names, the workload that owns it, its containers' ids, and the
//! OpenTelemetry `k8s.*` resource attributes they give a process.

use k8s_openapi::api::core::v1::Pod;

/// A kind of workload that can own pods, directly or through a ReplicaSet or Job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Workload {
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
}

impl Workload {
    pub fn from_kind(kind: &str) -> Option<Self> {
        Some(match kind {
            "Deployment" => Workload::Deployment,
            "ReplicaSet" => Workload::ReplicaSet,
            "StatefulSet" => Workload::StatefulSet,
            "DaemonSet" => Workload::DaemonSet,
            "Job" => Workload::Job,
            "CronJob" => Workload::CronJob,
            _ => return None,
        })
    }

    /// The OpenTelemetry resource attribute naming a workload of this kind.
    pub fn attribute(self) -> &'static str {
        match self {
            Workload::Deployment => "k8s.deployment.name",
            Workload::ReplicaSet => "k8s.replicaset.name",
            Workload::StatefulSet => "k8s.statefulset.name",
            Workload::DaemonSet => "k8s.daemonset.name",
            Workload::Job => "k8s.job.name",
            Workload::CronJob => "k8s.cronjob.name",
        }
    }
}

/// One pod of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMeta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub node: String,
    /// The `app.kubernetes.io/name` label.
    pub app_label: Option<String>,
    /// The controller that owns the pod directly.
    pub owner: Option<(Workload, String)>,
    /// Its owner's owner, when that is a Deployment (of a ReplicaSet) or a CronJob (of a Job).
    pub top_owner: Option<(Workload, String)>,
    /// (container id, container name); ids are 64 lowercase hex characters.
    pub containers: Vec<(String, String)>,
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` → `<id>`.
fn container_id(raw: &str) -> Option<String> {
    let id = raw.rsplit("://").next()?.to_ascii_lowercase();
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

impl PodMeta {
    /// What the agent keeps of a pod from the API; `None` without a name or uid.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let md = &pod.metadata;
        let owner = md.owner_references.as_ref().and_then(|refs| {
            refs.iter()
                .find(|r| r.controller == Some(true))
                .or_else(|| refs.first())
                .and_then(|r| Workload::from_kind(&r.kind).map(|w| (w, r.name.clone())))
        });
        let status = pod.status.as_ref();
        let containers = status
            .into_iter()
            .flat_map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
            })
            .filter_map(|c| Some((container_id(c.container_id.as_deref()?)?, c.name.clone())))
            .collect();
        Some(PodMeta {
            name: md.name.clone()?,
            namespace: md.namespace.clone().unwrap_or_else(|| "default".into()),
            uid: md.uid.clone()?,
            node: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            app_label: md
                .labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/name").cloned()),
            owner,
            top_owner: None,
            containers,
        })
    }

    /// The workload a person would name: the Deployment rather than its ReplicaSet, the
    /// CronJob rather than its Job.
    pub fn workload(&self) -> Option<&(Workload, String)> {
        self.top_owner.as_ref().or(self.owner.as_ref())
    }

    /// `k8s.*` resource attributes for a process in this pod (and this container, if known).
    pub fn attributes(&self, container_id: Option<&str>) -> Vec<(String, String)> {
        let mut a = vec![
            ("k8s.pod.name".to_string(), self.name.clone()),
            ("k8s.pod.uid".into(), self.uid.clone()),
            ("k8s.namespace.name".into(), self.namespace.clone()),
        ];
        if !self.node.is_empty() {
            a.push(("k8s.node.name".into(), self.node.clone()));
        }
        if let Some(name) = container_id
            .and_then(|id| self.containers.iter().find(|(c, _)| c == id))
            .map(|(_, n)| n.clone())
        {
            a.push(("k8s.container.name".into(), name));
        }
        for (kind, name) in self.owner.iter().chain(self.top_owner.iter()) {
            a.push((kind.attribute().to_string(), name.clone()));
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f6a1e0b9c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f";

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("a pod")
    }

    #[test]
    fn pod_from_the_api() {
        let p = pod(serde_json::json!({
            "metadata": {
                "name": "checkout-7d9f8b-x2x4q", "namespace": "shop", "uid": "u-1",
                "labels": {"app.kubernetes.io/name": "checkout"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "checkout-7d9f8b", "uid": "rs-1", "controller": true}]
            },
            "spec": {"nodeName": "node-1", "containers": [{"name": "app"}]},
            "status": {"containerStatuses": [{"name": "app", "containerID": format!("containerd://{ID}"),
                "image": "x", "imageID": "y", "ready": true, "restartCount": 0}]}
        }));
        let mut m = PodMeta::from_pod(&p).unwrap();
        assert_eq!(
            m.owner,
            Some((Workload::ReplicaSet, "checkout-7d9f8b".into()))
        );
        assert_eq!(m.containers, vec![(ID.to_string(), "app".to_string())]);
        m.top_owner = Some((Workload::Deployment, "checkout".into()));
        assert_eq!(m.workload().unwrap().1, "checkout");
        let attrs = m.attributes(Some(ID));
        let get = |k: &str| attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("k8s.pod.name"), Some("checkout-7d9f8b-x2x4q"));
        assert_eq!(get("k8s.namespace.name"), Some("shop"));
        assert_eq!(get("k8s.node.name"), Some("node-1"));
        assert_eq!(get("k8s.container.name"), Some("app"));
        assert_eq!(get("k8s.deployment.name"), Some("checkout"));
        assert_eq!(get("k8s.replicaset.name"), Some("checkout-7d9f8b"));
    }

    #[test]
    fn bare_pod_and_missing_fields() {
        let p = pod(serde_json::json!({"metadata": {"name": "solo", "uid": "u-2"}}));
        let m = PodMeta::from_pod(&p).unwrap();
        assert_eq!(m.namespace, "default");
        assert_eq!(m.owner, None);
        assert!(m.attributes(None).iter().all(|(k, _)| k != "k8s.node.name"));
        assert!(PodMeta::from_pod(&pod(serde_json::json!({"metadata": {}}))).is_none());
        assert_eq!(container_id("docker://short"), None);
    }
}
