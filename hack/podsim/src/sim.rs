//! Dispatches pod events: binds unscheduled pods to this node, starts a
//! worker for each pod bound here and feeds it the latest object.

use crate::node::{binding, should_bind};
use crate::podwatch::PodEvent;
use crate::worker::{self, Ctx};
use k8s_openapi::api::core::v1::{Binding, Pod};
use kube_client::api::{Api, PostParams};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Handle {
    tx: watch::Sender<Option<Arc<Pod>>>,
    task: JoinHandle<()>,
}

struct Sim {
    ctx: Arc<Ctx>,
    token: CancellationToken,
    workers: HashMap<String, Handle>,
    done_tx: mpsc::UnboundedSender<String>,
    binding: Arc<Mutex<HashSet<String>>>,
    first_list: bool,
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

impl Sim {
    fn apply(&mut self, pod: Pod) {
        let uid = uid(&pod);
        let bound_here = pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
            == Some(self.ctx.node_name.as_str());
        if bound_here {
            if let Some(h) = self.workers.get(&uid) {
                h.tx.send_replace(Some(Arc::new(pod)));
            } else if !terminal(&pod) {
                let (tx, rx) = watch::channel(Some(Arc::new(pod)));
                let task = tokio::spawn(worker::run(
                    self.ctx.clone(),
                    rx,
                    self.token.child_token(),
                    self.done_tx.clone(),
                ));
                self.workers.insert(uid, Handle { tx, task });
            }
        } else if should_bind(&pod, &self.ctx.node_labels)
            && self.binding.lock().unwrap().insert(uid.clone())
        {
            let ctx = self.ctx.clone();
            let in_flight = self.binding.clone();
            let token = self.token.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = token.cancelled() => {}
                    _ = bind(&ctx, &pod) => {}
                }
                in_flight.lock().unwrap().remove(&uid);
            });
        }
    }

    async fn deleted(&mut self, pod: Pod) {
        let uid = uid(&pod);
        if let Some(h) = self.workers.get(&uid) {
            h.tx.send_replace(None);
        } else if self.ctx.ips.lock().unwrap().get(&uid).is_some() {
            self.ctx.forget(&uid).await;
        }
    }

    async fn relisted(&mut self, pods: Vec<Pod>) {
        let present: HashSet<String> = pods.iter().map(uid).collect();
        for (uid, h) in &self.workers {
            if !present.contains(uid) {
                h.tx.send_replace(None);
            }
        }
        let gone = self
            .ctx
            .ips
            .lock()
            .unwrap()
            .retain(|uid| present.contains(uid) || self.workers.contains_key(uid));
        for (uid, ip) in gone {
            log::info!("released {ip} of vanished pod {uid}");
            self.ctx.forget(&uid).await;
        }
        if std::mem::take(&mut self.first_list) {
            self.gc_datadirs(&present).await;
        }
        for pod in pods {
            self.apply(pod);
        }
    }

    /// Removes data directories of pods that no longer exist (podsim was
    /// down while they were deleted).
    async fn gc_datadirs(&self, present: &HashSet<String>) {
        let dir = self.ctx.state_dir.join("pods");
        let present = present.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !present.contains(&name) {
                    log::info!("removing data of vanished pod {name}");
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        })
        .await;
    }
}

/// POSTs the Binding, retrying transient errors a few times.
async fn bind(ctx: &Ctx, pod: &Pod) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let body = binding(pod, &ctx.node_name);
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    for _ in 0..8 {
        match api
            .create_subresource::<Binding, serde_json::Value>(
                "binding",
                &name,
                &PostParams::default(),
                &body,
            )
            .await
        {
            Ok(_) => {
                log::info!("bound pod {ns}/{name} to {}", ctx.node_name);
                return;
            }
            Err(kube_client::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                log::debug!("binding pod {ns}/{name}: {} ({})", s.message, s.code);
                return;
            }
            Err(e) => log::warn!("binding pod {ns}/{name}: {e}"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Runs until `token` is cancelled or `events` ends; then waits for every
/// worker to stop its node.
pub async fn run(ctx: Arc<Ctx>, mut events: mpsc::Receiver<PodEvent>, token: CancellationToken) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut sim = Sim {
        ctx,
        token: token.clone(),
        workers: HashMap::new(),
        done_tx,
        binding: Arc::new(Mutex::new(HashSet::new())),
        first_list: true,
    };
    loop {
        tokio::select! {
            // Shutdown first: workers exiting because of it are still
            // counted and awaited below.
            biased;
            _ = token.cancelled() => break,
            Some(uid) = done_rx.recv() => {
                sim.workers.remove(&uid);
            }
            event = events.recv() => match event {
                None => break,
                Some(PodEvent::Relisted(pods)) => sim.relisted(pods).await,
                Some(PodEvent::Applied(pod)) => sim.apply(pod),
                Some(PodEvent::Deleted(pod)) => sim.deleted(pod).await,
            },
        }
    }
    token.cancel();
    let count = sim.workers.len();
    let tasks: Vec<JoinHandle<()>> = sim.workers.drain().map(|(_, h)| h.task).collect();
    if tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(tasks))
        .await
        .is_err()
    {
        log::warn!("some pod workers did not stop in time");
    }
    log::info!("stopped {count} pod workers");
}
