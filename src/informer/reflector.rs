//! The reflector: list, then watch, keeping the store current.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube_client::api::{ListParams, WatchEvent};
use kube_client::core::Status;
use kube_client::Resource;
use log::{debug, info, warn};
use serde::de::DeserializeOwned;
use tokio::time::{sleep, timeout, Instant};

use super::{Informer, ListFailure, ObjectKey};

/// Objects per list page.
pub(super) const PAGE_SIZE: u32 = 500;
/// Server-side watch timeout; a random extra of up to [`WATCH_JITTER_SECS`]
/// spreads the rewatches of many informers.
pub(super) const WATCH_TIMEOUT_SECS: u32 = 300;
pub(super) const WATCH_JITTER_SECS: u32 = 30;
/// A watch that ends without any event sooner than this counts as a failure,
/// so a server that closes watches at once is not hammered.
const SHORT_WATCH: Duration = Duration::from_secs(1);

/// Why a list or watch attempt failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Api(#[from] kube_client::Error),
    #[error("watch error event: {status} (code {code})", code = .status.code)]
    Event { status: Box<Status> },
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("watch closed at once without events")]
    ShortWatch,
}

impl ListFailure {
    /// The API server's own words when it answered with an error status.
    fn of(err: &Failure) -> Self {
        match err {
            Failure::Api(kube_client::Error::Api(status)) => ListFailure {
                forbidden: status.code == 403,
                message: if status.message.is_empty() {
                    err.to_string()
                } else {
                    status.message.clone()
                },
            },
            _ => ListFailure {
                forbidden: false,
                message: err.to_string(),
            },
        }
    }
}

/// What to do after a watch ended.
enum Next {
    /// The resourceVersion is gone: list again.
    Relist,
    /// The watch ended normally: watch again from the last resourceVersion.
    Rewatch,
    /// Back off, then watch again.
    Retry(Failure),
}

fn status_is_gone(status: &Status) -> bool {
    status.code == 410 || status.reason == "Expired" || status.reason == "Gone"
}

fn is_gone(err: &kube_client::Error) -> bool {
    matches!(err, kube_client::Error::Api(status) if status_is_gone(status))
}

/// Exponential backoff, 800 ms doubling to 30 s, plus up to 20 % random
/// extra; it starts over once no failure happened for two minutes.
pub(super) struct Backoff {
    next: Duration,
    last_failure: Option<Instant>,
}

impl Backoff {
    pub(super) const INITIAL: Duration = Duration::from_millis(800);
    pub(super) const MAX: Duration = Duration::from_secs(30);
    pub(super) const RESET_AFTER: Duration = Duration::from_secs(120);
    pub(super) const JITTER: f64 = 0.2;

    pub(super) fn new() -> Self {
        Self {
            next: Self::INITIAL,
            last_failure: None,
        }
    }

    /// The delay before the next attempt, after a failure now.
    pub(super) fn delay(&mut self) -> Duration {
        let now = Instant::now();
        if self
            .last_failure
            .is_some_and(|at| now.duration_since(at) > Self::RESET_AFTER)
        {
            self.next = Self::INITIAL;
        }
        self.last_failure = Some(now);
        let base = self.next;
        self.next = (base * 2).min(Self::MAX);
        base.mul_f64(1.0 + rand::random_range(0.0..Self::JITTER))
    }
}

/// Drops fields the controller never reads before caching.
fn prepare<K: Resource>(mut obj: K) -> Arc<K> {
    obj.meta_mut().managed_fields = None;
    Arc::new(obj)
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// The reflector loop; never returns (the caller drops it to stop).
    pub(super) async fn reflect(&self) {
        let mut backoff = Backoff::new();
        // `None` until a list succeeded, and again after a 410.
        let mut resource_version: Option<String> = None;
        loop {
            let rv = match &mut resource_version {
                Some(rv) => rv,
                None => match self.list().await {
                    Ok(rv) => resource_version.insert(rv),
                    Err(err) => {
                        self.metrics.failure();
                        self.synced.set_list_failure(ListFailure::of(&err));
                        let delay = backoff.delay();
                        warn!(
                            "{} informer: list failed, retrying in {delay:?}: {err}",
                            self.kind
                        );
                        sleep(delay).await;
                        continue;
                    }
                },
            };
            match self.watch(rv).await {
                Next::Relist => {
                    self.metrics.relist();
                    info!(
                        "{} informer: resourceVersion {rv} is too old, relisting",
                        self.kind
                    );
                    resource_version = None;
                }
                Next::Rewatch => {}
                Next::Retry(err) => {
                    self.metrics.failure();
                    let delay = backoff.delay();
                    warn!(
                        "{} informer: watch failed, retrying in {delay:?}: {err}",
                        self.kind
                    );
                    sleep(delay).await;
                }
            }
        }
    }

    /// Lists all pages, replaces the store with the result, marks the
    /// informer synced and returns the list's resourceVersion.
    async fn list(&self) -> Result<String, Failure> {
        let mut params = ListParams::default().limit(PAGE_SIZE);
        let mut objects = Vec::new();
        let resource_version = loop {
            let page = timeout(self.idle_timeout, self.source.list(&params))
                .await
                .map_err(|_| Failure::Timeout(self.idle_timeout))??;
            objects.extend(page.items.into_iter().map(prepare));
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => break page.metadata.resource_version.unwrap_or_default(),
            }
        };
        let count = objects.len();
        for change in self.store.replace(objects) {
            self.notify(&change);
        }
        self.synced.set();
        self.metrics.list();
        info!(
            "{} informer: listed {count} objects at resourceVersion {resource_version}",
            self.kind
        );
        Ok(resource_version)
    }

    /// One watch call from `rv`, applying its events and advancing `rv`.
    async fn watch(&self, rv: &mut String) -> Next {
        let timeout_secs = WATCH_TIMEOUT_SECS + rand::random_range(0..WATCH_JITTER_SECS);
        debug!("{} informer: watching from resourceVersion {rv}", self.kind);
        self.metrics.watch();
        let mut events = match timeout(self.idle_timeout, self.source.watch(rv, timeout_secs)).await
        {
            Err(_) => return Next::Retry(Failure::Timeout(self.idle_timeout)),
            Ok(Err(err)) if is_gone(&err) => return Next::Relist,
            Ok(Err(err)) => return Next::Retry(err.into()),
            Ok(Ok(events)) => events,
        };
        let started = Instant::now();
        let mut seen_any = false;
        loop {
            let event = match timeout(self.idle_timeout, events.next()).await {
                Err(_) => {
                    warn!(
                        "{} informer: no watch event for {:?}, watching again",
                        self.kind, self.idle_timeout
                    );
                    return Next::Rewatch;
                }
                Ok(None) if !seen_any && started.elapsed() < SHORT_WATCH => {
                    return Next::Retry(Failure::ShortWatch)
                }
                Ok(None) => {
                    debug!(
                        "{} informer: watch ended at resourceVersion {rv}",
                        self.kind
                    );
                    return Next::Rewatch;
                }
                Ok(Some(event)) => event,
            };
            seen_any = true;
            match event {
                Ok(WatchEvent::Added(obj)) | Ok(WatchEvent::Modified(obj)) => {
                    self.metrics.watch_event();
                    let obj = prepare(obj);
                    advance(rv, &*obj);
                    debug!(
                        "{} informer: {} changed at {rv}",
                        self.kind,
                        ObjectKey::from_object(&*obj)
                    );
                    let change = self.store.apply(obj);
                    self.notify(&change);
                }
                Ok(WatchEvent::Deleted(obj)) => {
                    self.metrics.watch_event();
                    let obj = prepare(obj);
                    advance(rv, &*obj);
                    debug!(
                        "{} informer: {} deleted at {rv}",
                        self.kind,
                        ObjectKey::from_object(&*obj)
                    );
                    let change = self.store.delete(obj);
                    self.notify(&change);
                }
                Ok(WatchEvent::Bookmark(bookmark)) => {
                    *rv = bookmark.metadata.resource_version;
                }
                Ok(WatchEvent::Error(status)) if status_is_gone(&status) => return Next::Relist,
                Ok(WatchEvent::Error(status)) => return Next::Retry(Failure::Event { status }),
                Err(err) if is_gone(&err) => return Next::Relist,
                Err(err) => return Next::Retry(err.into()),
            }
        }
    }
}

/// Moves `rv` to the object's resourceVersion.
fn advance<K: Resource>(rv: &mut String, obj: &K) {
    if let Some(version) = &obj.meta().resource_version {
        rv.clone_from(version);
    }
}
