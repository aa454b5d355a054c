//! Kubernetes metadata for traced processes: which pod a container belongs to, the pod's
//! workload and labels. A watch of the pods of the agent's own node (field selector
//! `spec.nodeName`) keeps a [`Store`] current; `process` looks processes up in it by container id
//! (from `/proc/PID/cgroup`) or pod uid.
//!
//! Without a reachable API, or when RBAC denies it, the agent says so once and carries on with
//! the names it can find on the host.

pub mod meta;
mod watch;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, RwLock},
};

use anyhow::{Context as _, Result};
use tracing::info;

pub use meta::{PodMeta, Workload};

/// When to talk to the Kubernetes API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// When running in a cluster (service account or `KUBERNETES_SERVICE_HOST`), or when a
    /// kubeconfig is given.
    Auto,
    On,
    Off,
}

/// How to reach the API.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    pub kubeconfig: Option<PathBuf>,
    /// The node whose pods are watched.
    pub node: Option<String>,
}

const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

#[derive(Debug, Default)]
struct Inner {
    by_container: HashMap<String, Arc<PodMeta>>,
    by_uid: HashMap<String, Arc<PodMeta>>,
    /// Bumped at every change, so caches know when to look again.
    generation: u64,
}

/// The pods of this node, shared between the watch task and the process cache.
#[derive(Debug, Clone, Default)]
pub struct Store {
    inner: Arc<RwLock<Inner>>,
}

impl Store {
    /// The pod of a container (by id), else of a pod uid.
    pub fn lookup(
        &self,
        container_id: Option<&str>,
        pod_uid: Option<&str>,
    ) -> Option<Arc<PodMeta>> {
        let inner = self.inner.read().ok()?;
        container_id
            .and_then(|id| inner.by_container.get(id))
            .or_else(|| pod_uid.and_then(|uid| inner.by_uid.get(uid)))
            .cloned()
    }

    pub fn generation(&self) -> u64 {
        self.inner.read().map(|i| i.generation).unwrap_or(0)
    }

    /// Pods known.
    pub fn len(&self) -> usize {
        self.inner.read().map(|i| i.by_uid.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn upsert(&self, pod: PodMeta) {
        let Ok(mut inner) = self.inner.write() else {
            return;
        };
        remove_locked(&mut inner, &pod.uid);
        let pod = Arc::new(pod);
        for (id, _) in &pod.containers {
            inner.by_container.insert(id.clone(), pod.clone());
        }
        inner.by_uid.insert(pod.uid.clone(), pod);
        inner.generation += 1;
    }

    fn remove(&self, uid: &str) {
        if let Ok(mut inner) = self.inner.write() {
            remove_locked(&mut inner, uid);
            inner.generation += 1;
        }
    }

    fn clear(&self) {
        if let Ok(mut inner) = self.inner.write() {
            inner.by_container.clear();
            inner.by_uid.clear();
            inner.generation += 1;
        }
    }
}

fn remove_locked(inner: &mut Inner, uid: &str) {
    if let Some(old) = inner.by_uid.remove(uid) {
        for (id, _) in &old.containers {
            inner.by_container.remove(id);
        }
    }
}

/// True when the agent runs inside a Kubernetes pod.
pub fn in_cluster() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || std::path::Path::new(SERVICE_ACCOUNT_TOKEN).exists()
}

/// The node whose pods are watched: the option, `NODE_NAME` / `K8S_NODE_NAME` (set from the
/// downward API in the DaemonSet), else the host name.
fn node_name(opts: &Options) -> String {
    opts.node
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .or_else(|| std::env::var("K8S_NODE_NAME").ok())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(crate::process::host_name)
}

/// Starts the pod watch when the options (or the environment) ask for it; returns the store it
/// fills. Only a configuration that cannot be read is an error; an API that cannot be reached is
/// reported by the watch task and retried.
pub async fn start(opts: &Options) -> Result<Option<Store>> {
    let wanted = match opts.mode {
        Mode::Off => false,
        Mode::On => true,
        Mode::Auto => opts.kubeconfig.is_some() || in_cluster(),
    };
    if !wanted {
        return Ok(None);
    }
    let config = match &opts.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes configuration found (in-cluster or kubeconfig)")?,
    };
    let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
    let node = node_name(opts);
    info!(node = %node, "watching the Kubernetes pods of this node for k8s.* attributes");
    let store = Store::default();
    tokio::spawn(watch::run(client, node, store.clone()));
    Ok(Some(store))
}
