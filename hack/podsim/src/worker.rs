//! One task per pod bound to this node, like kubelet's pod workers: it gets
//! the latest pod object through a `watch` channel (`None`: the pod is
//! gone), and on every wake-up brings the world in line with it: address,
//! bitcoin.conf, regtest node, readiness probes, status, graceful deletion.

use crate::backoff::Backoff;
use crate::ipalloc::IpStore;
use crate::node::FIELD_MANAGER;
use crate::probe::{readiness_spec, Tracker};
use crate::runtime::{PodNode, StartError};
use crate::status::{self, Phase, View};
use crate::volumes::{conf_sources, pick, ConfSource, Kind, Pick};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube_client::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube_client::Client;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Pod annotation: `"true"` makes the pod's node accept RPC connections and
/// never answer (see README).
pub const RPC_HANG_ANNOTATION: &str = "podsim.bitcoin-controller/rpc-hang";

/// What every worker shares.
pub struct Ctx {
    pub client: Client,
    pub node_name: String,
    pub node_labels: BTreeMap<String, String>,
    pub state_dir: PathBuf,
    pub ips: Mutex<IpStore>,
}

impl Ctx {
    pub fn datadir(&self, uid: &str) -> PathBuf {
        self.state_dir.join("pods").join(uid)
    }

    /// Forgets a pod for good: its address and its data directory.
    pub async fn forget(&self, uid: &str) {
        if let Some(ip) = self.ips.lock().unwrap().release(uid) {
            log::debug!("released {ip} of pod {uid}");
        }
        let dir = self.datadir(uid);
        let _ = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                log::warn!("removing {}: {e}", dir.display())
            }
            _ => {}
        })
        .await;
    }
}

pub type PodRx = watch::Receiver<Option<Arc<Pod>>>;

fn resource_version(pod: &Pod) -> Option<u64> {
    pod.metadata
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
}

async fn node_exit(node: Option<&PodNode>) {
    match node {
        Some(node) => node.stopped().await,
        None => std::future::pending().await,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(24 * 3600)
}

fn due(at: Option<Instant>) -> bool {
    at.is_none_or(|t| t <= Instant::now())
}

async fn fetch(
    client: &Client,
    ns: &str,
    src: &ConfSource,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    match src.kind {
        Kind::Secret => {
            let api: Api<Secret> = Api::namespaced(client.clone(), ns);
            let secret = api
                .get_opt(&src.name)
                .await
                .map_err(|e| format!("{src}: {e}"))?;
            Ok(secret.map(|s| {
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect()
            }))
        }
        Kind::ConfigMap => {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            let cm = api
                .get_opt(&src.name)
                .await
                .map_err(|e| format!("{src}: {e}"))?;
            Ok(cm.map(|cm| {
                let mut data: BTreeMap<String, Vec<u8>> = cm
                    .binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                data.extend(
                    cm.data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes())),
                );
                data
            }))
        }
    }
}

/// `Ok(Some(text))`: a bitcoin pod; `Ok(None)`: a generic pod; `Err`: a
/// volume cannot be "mounted" yet.
async fn resolve_conf(client: &Client, ns: &str, pod: &Pod) -> Result<Option<String>, String> {
    for src in conf_sources(pod) {
        let data = fetch(client, ns, &src).await?;
        match pick(&src, data.as_ref()) {
            Pick::Found(text) => return Ok(Some(text)),
            Pick::Skip => {}
            Pick::Blocked(why) => return Err(why),
        }
    }
    Ok(None)
}

struct Worker {
    ctx: Arc<Ctx>,
    api: Api<Pod>,
    uid: String,
    key: String,
    pod: Arc<Pod>,
    /// resourceVersion of our last status patch: older watch events are stale.
    patched_rv: Option<u64>,
    ip: Option<IpAddr>,
    /// `None`: not read yet; `Some(None)`: no bitcoin.conf (generic pod).
    conf: Option<Option<String>>,
    /// Why the pod cannot run yet: (reason, message).
    blocked: Option<(String, String)>,
    node: Option<PodNode>,
    hang: bool,
    /// Set once the pod was reported Running (or found Running by a
    /// previous podsim): it never goes back to Pending.
    running: bool,
    adopted: bool,
    /// Restarts of the node after it exited (reported as restartCount).
    restarts: i32,
    trackers: BTreeMap<String, Tracker>,
    retry_at: Option<Instant>,
    retry: Backoff,
    status_retry_at: Option<Instant>,
    status_backoff: Backoff,
    delete_retry_at: Option<Instant>,
    delete_backoff: Backoff,
}

enum Next {
    Continue,
    Done,
}

impl Worker {
    fn new(ctx: Arc<Ctx>, pod: Arc<Pod>) -> Worker {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let status = pod.status.as_ref();
        // Found running by an earlier podsim (our container IDs): re-adopt.
        let ours = format!("podsim://{uid}/");
        let adopted = status.is_some_and(|s| {
            s.phase.as_deref() == Some("Running")
                && s.pod_ip.is_some()
                && s.container_statuses.iter().flatten().any(|c| {
                    c.container_id
                        .as_deref()
                        .is_some_and(|id| id.starts_with(&ours))
                })
        });
        let restarts = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.iter().map(|c| c.restart_count).max())
            .unwrap_or(0);
        Worker {
            api: Api::namespaced(ctx.client.clone(), &ns),
            ctx,
            key: format!("{ns}/{name}"),
            uid,
            pod,
            patched_rv: None,
            ip: None,
            conf: None,
            blocked: None,
            node: None,
            hang: false,
            running: false,
            adopted,
            restarts,
            trackers: BTreeMap::new(),
            retry_at: None,
            retry: Backoff::new(Duration::from_millis(500), Duration::from_secs(5)),
            status_retry_at: None,
            status_backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(10)),
            delete_retry_at: None,
            delete_backoff: Backoff::default(),
        }
    }

    fn observe(&mut self, pod: Arc<Pod>) {
        if let (Some(seen), Some(new)) = (self.patched_rv, resource_version(&pod)) {
            if new < seen {
                return; // older than our own patch response
            }
        }
        self.pod = pod;
    }

    fn fail_retry(&mut self, reason: &str, message: String) {
        if self.blocked.as_ref().is_none_or(|(_, m)| *m != message) {
            log::warn!("pod {}: {reason}: {message}", self.key);
        }
        self.blocked = Some((reason.to_string(), message));
        self.retry_at = Some(Instant::now() + self.retry.next_delay());
    }

    /// Address, config, node; each step retried with backoff on failure.
    async fn ensure_running(&mut self) {
        if !due(self.retry_at) {
            return;
        }
        let ip = match self.ip {
            Some(ip) => ip,
            None => {
                let spec = self.pod.spec.as_ref();
                let ip = if spec.and_then(|s| s.host_network) == Some(true) {
                    Ok(IpAddr::V4(Ipv4Addr::LOCALHOST))
                } else {
                    let preferred = self
                        .pod
                        .status
                        .as_ref()
                        .and_then(|s| s.pod_ip.as_deref())
                        .and_then(|ip| ip.parse().ok());
                    self.ctx
                        .ips
                        .lock()
                        .unwrap()
                        .allocate(&self.uid, preferred)
                        .map(IpAddr::V4)
                };
                match ip {
                    Ok(ip) => {
                        self.ip = Some(ip);
                        if self.adopted {
                            // Was Running before our restart: stays Running
                            // (not ready if its node does not come back).
                            self.start_probes();
                        }
                        ip
                    }
                    Err(e) => return self.fail_retry("ContainerCreating", e.to_string()),
                }
            }
        };
        if self.conf.is_none() {
            match resolve_conf(&self.ctx.client, self.api_namespace(), &self.pod).await {
                Ok(conf) => self.conf = Some(conf),
                Err(why) => return self.fail_retry("ContainerCreating", why),
            }
        }
        if let (Some(Some(text)), None) = (&self.conf, &self.node) {
            let datadir = self.ctx.datadir(&self.uid);
            match PodNode::start(ip, text, datadir).await {
                Ok(node) => {
                    log::info!(
                        "pod {}: node started on {ip} ({})",
                        self.key,
                        node.describe()
                    );
                    self.node = Some(node);
                    self.hang = false;
                }
                Err(e) => {
                    // Read the config again next time: it may get fixed.
                    self.conf = None;
                    let reason = match e {
                        StartError::Config(_) => "CreateContainerConfigError",
                        StartError::Io(_) => "RunContainerError",
                    };
                    return self.fail_retry(reason, e.to_string());
                }
            }
        }
        self.blocked = None;
        self.retry_at = None;
        self.retry.reset();
        if !self.running {
            self.start_probes();
        }
    }

    fn api_namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or_default()
    }

    /// The pod's sandbox is up: readiness probes start.
    fn start_probes(&mut self) {
        self.running = true;
        let now = Instant::now();
        let prev_ready = |name: &str| {
            self.adopted
                && self
                    .pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|cs| cs.iter().find(|c| c.name == name))
                    .is_some_and(|c| c.ready)
        };
        let trackers = self
            .pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .filter_map(|c| {
                readiness_spec(c)
                    .map(|spec| (c.name.clone(), Tracker::new(spec, now, prev_ready(&c.name))))
            })
            .collect();
        self.trackers = trackers;
    }

    fn apply_hang(&mut self) {
        let want = self
            .pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(RPC_HANG_ANNOTATION))
            .is_some_and(|v| v == "true");
        if let Some(node) = &self.node {
            if want != self.hang {
                log::info!(
                    "pod {}: rpc-hang fault {}",
                    self.key,
                    if want { "on" } else { "off" }
                );
                node.set_rpc_hang(want);
                self.hang = want;
            }
        }
    }

    fn view(&self) -> View {
        let phase = match (self.running, self.ip) {
            (true, Some(ip)) => Phase::Running {
                pod_ip: ip.to_string(),
            },
            _ => {
                let (reason, message) = self
                    .blocked
                    .clone()
                    .unwrap_or_else(|| ("ContainerCreating".into(), String::new()));
                Phase::Creating { reason, message }
            }
        };
        let ready = self
            .pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| {
                (
                    c.name.clone(),
                    self.trackers.get(&c.name).is_none_or(Tracker::ready),
                )
            })
            .collect();
        View {
            phase,
            ready,
            restarts: self.restarts,
        }
    }

    async fn sync_status(&mut self) {
        if !due(self.status_retry_at) {
            return;
        }
        // Nothing to say before the first attempt to start ran.
        if !self.running && self.blocked.is_none() {
            return;
        }
        let want = status::desired(
            &self.pod,
            &self.view(),
            &Time(k8s_openapi::jiff::Timestamp::now()),
        );
        if !status::differs(&self.pod, &want) {
            return;
        }
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        match self
            .api
            .patch_status(&name, &pp, &Patch::Merge(status::merge_patch(&want)))
            .await
        {
            Ok(mut pod) => {
                pod.metadata.managed_fields = None;
                let ready = want
                    .conditions
                    .iter()
                    .flatten()
                    .find(|c| c.type_ == "Ready")
                    .map(|c| c.status.as_str());
                log::info!(
                    "pod {}: {} ip={} ready={}",
                    self.key,
                    want.phase.as_deref().unwrap_or_default(),
                    want.pod_ip.as_deref().unwrap_or("-"),
                    ready.unwrap_or("-")
                );
                self.patched_rv = resource_version(&pod);
                self.pod = Arc::new(pod);
                self.status_retry_at = None;
                self.status_backoff.reset();
            }
            Err(e) => {
                log::warn!("pod {}: status update: {e}", self.key);
                self.status_retry_at = Some(Instant::now() + self.status_backoff.next_delay());
            }
        }
    }

    async fn run_due_probes(&mut self) {
        let now = Instant::now();
        let Some(ip) = self.ip else { return };
        let target = self.node.as_ref().map(PodNode::rpc_target);
        for (name, tracker) in self.trackers.iter_mut() {
            if !tracker.due(now) {
                continue;
            }
            let result = crate::net::run_probe(
                &tracker.spec.action,
                ip,
                target.as_ref(),
                tracker.spec.timeout,
            )
            .await;
            if let Err(e) = &result {
                log::debug!(
                    "pod {} container {name}: readiness probe failed: {e}",
                    self.key
                );
            }
            if tracker.record(result.is_ok(), Instant::now()) {
                log::info!(
                    "pod {} container {name}: readiness {}{}",
                    self.key,
                    if tracker.ready() { "passed" } else { "failed" },
                    result.err().map(|e| format!(": {e}")).unwrap_or_default()
                );
            }
        }
    }

    async fn stop_node(&mut self, limit: Duration) {
        if let Some(node) = self.node.take() {
            if tokio::time::timeout(limit, node.stop()).await.is_err() {
                log::warn!("pod {}: node did not stop within {limit:?}", self.key);
            } else {
                log::info!("pod {}: node stopped", self.key);
            }
        }
    }

    /// Graceful deletion: stop the node within the grace period, then
    /// remove the pod object (grace 0, UID precondition) as kubelet does.
    async fn terminate(&mut self) -> Next {
        let grace = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .unwrap_or(30)
            .max(1) as u64;
        self.stop_node(Duration::from_secs(grace)).await;
        if !due(self.delete_retry_at) {
            return Next::Continue;
        }
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        match self.api.delete(&name, &dp).await {
            Ok(_) => log::info!("pod {}: deleted", self.key),
            Err(kube_client::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                log::debug!("pod {}: already gone ({})", self.key, s.code)
            }
            Err(e) => {
                log::warn!("pod {}: delete: {e}", self.key);
                self.delete_retry_at = Some(Instant::now() + self.delete_backoff.next_delay());
                return Next::Continue;
            }
        }
        self.ctx.forget(&self.uid).await;
        Next::Done
    }

    fn next_wake(&self) -> Instant {
        let probes = self
            .trackers
            .values()
            .map(Tracker::next_at)
            .filter(|_| self.running);
        [self.retry_at, self.status_retry_at, self.delete_retry_at]
            .into_iter()
            .flatten()
            .chain(probes)
            .min()
            .unwrap_or_else(far_future)
    }

    async fn run(&mut self, rx: &mut PodRx, token: &CancellationToken) {
        loop {
            if self.pod.metadata.deletion_timestamp.is_some() {
                if let Next::Done = self.terminate().await {
                    return;
                }
            } else {
                self.ensure_running().await;
                self.apply_hang();
                self.sync_status().await;
            }
            let wake = self.next_wake();
            tokio::select! {
                _ = token.cancelled() => {
                    // podsim is shutting down: pods stay as they are.
                    self.stop_node(Duration::from_secs(10)).await;
                    return;
                }
                changed = rx.changed() => {
                    if changed.is_err() {
                        // The manager is gone (shutting down): like cancel.
                        self.stop_node(Duration::from_secs(10)).await;
                        return;
                    }
                    let pod = rx.borrow_and_update().clone();
                    match pod {
                        Some(pod) => self.observe(pod),
                        None => {
                            log::info!("pod {}: gone", self.key);
                            self.stop_node(Duration::from_secs(10)).await;
                            self.ctx.forget(&self.uid).await;
                            return;
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake) => self.run_due_probes().await,
                _ = node_exit(self.node.as_ref()) => {
                    // The "container" exited (RPC `stop`): restart it, as
                    // kubelet would with restartPolicy Always.
                    // Like kubelet: restartCount goes up and the new
                    // container is not ready until its probe passes.
                    log::warn!("pod {}: node exited; restarting it", self.key);
                    self.stop_node(Duration::from_secs(10)).await;
                    self.restarts += 1;
                    self.adopted = false;
                    self.start_probes();
                    self.retry_at = Some(Instant::now() + self.retry.next_delay());
                }
            }
        }
    }
}

/// Runs the worker for one pod until it is deleted, gone, or `token` is
/// cancelled; then reports its UID on `done`.
pub async fn run(
    ctx: Arc<Ctx>,
    mut rx: PodRx,
    token: CancellationToken,
    done: mpsc::UnboundedSender<String>,
) {
    let Some(pod) = rx.borrow_and_update().clone() else {
        return;
    };
    let mut worker = Worker::new(ctx, pod);
    worker.run(&mut rx, &token).await;
    let _ = done.send(worker.uid.clone());
}
