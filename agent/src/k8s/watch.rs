//! The watch of this node's pods, and the lookups that name their workloads (a ReplicaSet's
//! Deployment, a Job's CronJob). Errors are reported once per kind and retried with backoff.

use std::collections::HashMap;

use futures::StreamExt as _;
use k8s_openapi::api::{apps::v1::ReplicaSet, batch::v1::Job, core::v1::Pod};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use tracing::{debug, info, warn};

use super::{PodMeta, Store, Workload};

/// Owners already looked up: (namespace, kind, name) → the owner's owner.
type OwnerCache = HashMap<(String, Workload, String), Option<(Workload, String)>>;

/// Most owners remembered.
const MAX_OWNERS: usize = 8192;

fn is_forbidden(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 403)
}

fn explain(err: &watcher::Error) -> String {
    let inner = match err {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => Some(e),
        _ => None,
    };
    if inner.is_some_and(is_forbidden) {
        format!(
            "the Kubernetes API denied listing pods ({err}); grant the agent's service account \
             get/list/watch on pods (deploy/kubernetes/rbac.yaml)"
        )
    } else {
        format!("the Kubernetes API is unavailable ({err})")
    }
}

/// Runs until the agent stops.
pub async fn run(client: Client, node: String, store: Store) {
    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher(pods, config).default_backoff().boxed();
    let mut owners = OwnerCache::new();
    let mut warned = false;
    let mut fresh: Vec<PodMeta> = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(watcher::Event::Init) => fresh.clear(),
            Ok(watcher::Event::InitApply(pod)) => {
                if let Some(m) = describe(&client, &pod, &mut owners).await {
                    fresh.push(m);
                }
            }
            Ok(watcher::Event::InitDone) => {
                store.clear();
                let n = fresh.len();
                for m in fresh.drain(..) {
                    store.upsert(m);
                }
                if warned {
                    info!("the Kubernetes API is reachable again");
                    warned = false;
                }
                info!(pods = n, node = %node, "Kubernetes pods of this node listed");
            }
            Ok(watcher::Event::Apply(pod)) => {
                if let Some(m) = describe(&client, &pod, &mut owners).await {
                    debug!(pod = %m.name, namespace = %m.namespace, "pod updated");
                    store.upsert(m);
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    store.remove(uid);
                }
            }
            Err(err) => {
                if !warned {
                    warn!(
                        "{}; spans carry no k8s.* attributes until it answers (retrying)",
                        explain(&err)
                    );
                    warned = true;
                } else {
                    debug!(%err, "Kubernetes watch still failing");
                }
            }
        }
    }
}

/// A pod's metadata with its workload resolved through its ReplicaSet or Job.
async fn describe(client: &Client, pod: &Pod, owners: &mut OwnerCache) -> Option<PodMeta> {
    let mut m = PodMeta::from_pod(pod)?;
    if let Some((kind @ (Workload::ReplicaSet | Workload::Job), name)) = m.owner.clone() {
        let key = (m.namespace.clone(), kind, name.clone());
        let top = match owners.get(&key) {
            Some(top) => top.clone(),
            None => {
                let top = owner_of(client, &m.namespace, kind, &name).await;
                if owners.len() >= MAX_OWNERS {
                    owners.clear();
                }
                owners.insert(key, top.clone());
                top
            }
        };
        m.top_owner = top;
    }
    Some(m)
}

/// The controller that owns a ReplicaSet (a Deployment) or a Job (a CronJob), if any.
async fn owner_of(
    client: &Client,
    namespace: &str,
    kind: Workload,
    name: &str,
) -> Option<(Workload, String)> {
    let refs = match kind {
        Workload::ReplicaSet => Api::<ReplicaSet>::namespaced(client.clone(), namespace)
            .get(name)
            .await
            .map(|rs| rs.metadata.owner_references),
        Workload::Job => Api::<Job>::namespaced(client.clone(), namespace)
            .get(name)
            .await
            .map(|j| j.metadata.owner_references),
        _ => return None,
    };
    match refs {
        Ok(refs) => refs?
            .into_iter()
            .find(|r| r.controller == Some(true))
            .and_then(|r| Some((Workload::from_kind(&r.kind)?, r.name))),
        Err(err) => {
            debug!(%err, namespace, name, "cannot look up the owner of a pod's controller");
            None
        }
    }
}
