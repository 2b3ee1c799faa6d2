//! A plain list+watch of all pods: paginated list, then watch from the
//! list's resourceVersion with bookmarks; re-watch when a watch ends or
//! goes quiet for too long (kube-client has no read timeout), relist on
//! 410 Gone or any other error, with backoff.

use crate::backoff::Backoff;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube_client::api::{Api, ListParams, WatchEvent, WatchParams};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const PAGE: u32 = 500;
/// Server-side watch timeout; the server ends the watch after this.
const WATCH_TIMEOUT_SECS: u32 = 290;
/// Nothing at all (not even a bookmark) for this long: the connection is
/// presumed dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(330);

#[derive(Debug)]
pub enum PodEvent {
    /// Every pod there is (after a list): anything not in here is gone.
    Relisted(Vec<Pod>),
    Applied(Pod),
    Deleted(Pod),
}

fn strip(mut pod: Pod) -> Pod {
    pod.metadata.managed_fields = None;
    pod
}

fn is_gone(e: &kube_client::Error) -> bool {
    matches!(e, kube_client::Error::Api(s) if s.code == 410)
}

async fn list_all(api: &Api<Pod>) -> Result<(Vec<Pod>, String), kube_client::Error> {
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(PAGE);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await?;
        items.extend(page.items.into_iter().map(strip));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            let rv = page.metadata.resource_version.unwrap_or_default();
            return Ok((items, rv));
        }
    }
}

enum WatchEnd {
    /// Ended normally or went idle: watch again from the last version.
    Rewatch,
    /// 410 or an error: list again.
    Relist,
}

/// Runs until `token` is cancelled or the receiver is gone.
pub async fn run(api: Api<Pod>, tx: mpsc::Sender<PodEvent>, token: CancellationToken) {
    let mut backoff = Backoff::default();
    'relist: loop {
        let (pods, mut rv) = tokio::select! {
            _ = token.cancelled() => return,
            r = list_all(&api) => match r {
                Ok(r) => r,
                Err(e) => {
                    log::warn!("listing pods: {e}");
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => continue 'relist,
                    }
                }
            },
        };
        log::debug!("listed {} pods at resourceVersion {rv}", pods.len());
        if tx.send(PodEvent::Relisted(pods)).await.is_err() {
            return;
        }
        loop {
            let end = tokio::select! {
                _ = token.cancelled() => return,
                end = watch_once(&api, &tx, &mut rv, &mut backoff) => end,
            };
            match end {
                Some(WatchEnd::Rewatch) => continue,
                Some(WatchEnd::Relist) => {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => continue 'relist,
                    }
                }
                None => return,
            }
        }
    }
}

/// One watch request. `None`: the receiver is gone.
async fn watch_once(
    api: &Api<Pod>,
    tx: &mpsc::Sender<PodEvent>,
    rv: &mut String,
    backoff: &mut Backoff,
) -> Option<WatchEnd> {
    let wp = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
    let stream = match api.watch(&wp, rv).await {
        Ok(s) => s,
        Err(e) => {
            if !is_gone(&e) {
                log::warn!("watching pods: {e}");
            }
            return Some(WatchEnd::Relist);
        }
    };
    let mut stream = std::pin::pin!(stream);
    loop {
        let item = match tokio::time::timeout(IDLE_TIMEOUT, stream.next()).await {
            Err(_) => {
                log::warn!("pod watch idle for {IDLE_TIMEOUT:?}; watching again");
                return Some(WatchEnd::Rewatch);
            }
            Ok(None) => return Some(WatchEnd::Rewatch),
            Ok(Some(item)) => item,
        };
        let event = match item {
            Ok(WatchEvent::Added(p)) | Ok(WatchEvent::Modified(p)) => {
                *rv = p
                    .metadata
                    .resource_version
                    .clone()
                    .unwrap_or_else(|| rv.clone());
                PodEvent::Applied(strip(p))
            }
            Ok(WatchEvent::Deleted(p)) => {
                *rv = p
                    .metadata
                    .resource_version
                    .clone()
                    .unwrap_or_else(|| rv.clone());
                PodEvent::Deleted(strip(p))
            }
            Ok(WatchEvent::Bookmark(b)) => {
                *rv = b.metadata.resource_version;
                backoff.reset();
                continue;
            }
            Ok(WatchEvent::Error(s)) => {
                if s.code != 410 {
                    log::warn!("pod watch error: {} ({})", s.message, s.code);
                } else {
                    log::debug!("pod watch: resourceVersion too old; relisting");
                }
                return Some(WatchEnd::Relist);
            }
            Err(e) => {
                log::warn!("pod watch stream: {e}");
                return Some(WatchEnd::Relist);
            }
        };
        backoff.reset();
        if tx.send(event).await.is_err() {
            return None;
        }
    }
}
