//! The reflector: list, then watch, keeping the store current.

use std::error::Error as _;
use std::fmt::{self, Debug};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube_client::api::{ListParams, WatchEvent};
use kube_client::core::Status;
use kube_client::Resource;
use log::{debug, info, warn};
use serde::de::DeserializeOwned;
use tokio::time::{sleep, timeout, timeout_at, Instant};

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
/// A watch re-established after a failure makes the cache fresh once it
/// stayed quiet this long (its backlog delivered; not shorter than
/// [`SHORT_WATCH`], so a watch the server closes at once never counts),
/// or sent a bookmark...
pub(super) const SETTLE: Duration = SHORT_WATCH;
/// ...or, on a busy stream that never goes quiet, this long after it was
/// established.
pub(super) const SETTLE_MAX: Duration = Duration::from_secs(5);

/// Why a list or watch attempt failed.
#[derive(Debug)]
enum Failure {
    Api(kube_client::Error),
    Event(Box<Status>),
    Timeout(Duration),
    ShortWatch,
}

impl From<kube_client::Error> for Failure {
    fn from(err: kube_client::Error) -> Self {
        Self::Api(err)
    }
}

impl Failure {
    /// The error status the API server answered with, if it did.
    fn status(&self) -> Option<&Status> {
        match self {
            Failure::Api(kube_client::Error::Api(status)) | Failure::Event(status) => Some(status),
            _ => None,
        }
    }

    /// A 403: the credentials lack the right (or the API server is still
    /// loading its RBAC rules).
    fn is_forbidden(&self) -> bool {
        self.status().is_some_and(|status| status.code == 403)
    }
}

/// One line: the status code and the server's message for API errors (never
/// the whole Status), the error and its causes for anything else.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Event(status) => write!(f, "error event: {}", status_line(status)),
            Failure::Api(kube_client::Error::Api(status)) => f.write_str(&status_line(status)),
            Failure::Api(err) => f.write_str(&chain(err)),
            Failure::Timeout(after) => write!(f, "no response within {after:?}"),
            Failure::ShortWatch => f.write_str("closed at once without events"),
        }
    }
}

/// `403 configmaps is forbidden: ...`; the reason when there is no message.
fn status_line(status: &Status) -> String {
    let text = if status.message.is_empty() {
        &status.reason
    } else {
        &status.message
    };
    format!("{} {text}", status.code).trim_end().to_owned()
}

/// An error and its sources joined on one line, skipping a source whose
/// text the line already holds.
fn chain(err: &kube_client::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

impl ListFailure {
    /// The API server's own words when it answered with an error status.
    fn of(err: &Failure) -> Self {
        let message = match err.status() {
            Some(status) if !status.message.is_empty() => status.message.clone(),
            _ => err.to_string(),
        };
        ListFailure {
            forbidden: err.is_forbidden(),
            message,
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

/// Delays between failed attempts: exponential, 800 ms doubling to 30 s,
/// plus up to 20 % random extra, back to the start once a call succeeds
/// ([`reset`](Self::reset)); a 403 waits a fixed 2 s (plus jitter) and
/// leaves the exponential delay where it was.
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(super) const INITIAL: Duration = Duration::from_millis(800);
    pub(super) const MAX: Duration = Duration::from_secs(30);
    pub(super) const FORBIDDEN: Duration = Duration::from_secs(2);
    pub(super) const JITTER: f64 = 0.2;

    pub(super) fn new() -> Self {
        Self {
            next: Self::INITIAL,
        }
    }

    /// The delay before the next attempt, after a failure now.
    pub(super) fn delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (base * 2).min(Self::MAX);
        jitter(base)
    }

    /// The delay after a 403: fixed, and the exponential delay does not
    /// grow.
    pub(super) fn forbidden_delay(&self) -> Duration {
        jitter(Self::FORBIDDEN)
    }

    /// A call succeeded: the next failure waits [`INITIAL`](Self::INITIAL).
    pub(super) fn reset(&mut self) {
        self.next = Self::INITIAL;
    }

    /// The delay after `failure`.
    fn after(&mut self, failure: &Failure) -> Duration {
        if failure.is_forbidden() {
            self.forbidden_delay()
        } else {
            self.delay()
        }
    }
}

fn jitter(base: Duration) -> Duration {
    base.mul_f64(1.0 + rand::random_range(0.0..Backoff::JITTER))
}

/// `1.7s`: a delay as logged.
fn secs(delay: Duration) -> String {
    format!("{:.1}s", delay.as_secs_f64())
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// What the cache keeps of `obj`: without managedFields, then through
    /// the informer's transform.
    fn prepare(&self, mut obj: K) -> Arc<K> {
        obj.meta_mut().managed_fields = None;
        Arc::new((self.transform)(obj))
    }

    /// The reflector loop; never returns (the caller drops it to stop).
    pub(super) async fn reflect(&self) {
        let mut backoff = Backoff::new();
        // `None` until a list succeeded, and again after a 410.
        let mut resource_version: Option<String> = None;
        loop {
            let rv = match &mut resource_version {
                Some(rv) => rv,
                None => match self.list().await {
                    Ok(rv) => {
                        backoff.reset();
                        resource_version.insert(rv)
                    }
                    Err(err) => {
                        self.metrics.failure();
                        self.synced.set_list_failure(ListFailure::of(&err));
                        let delay = backoff.after(&err);
                        warn!(
                            "{} informer: list failed (retry in {}): {err}",
                            self.kind,
                            secs(delay)
                        );
                        sleep(delay).await;
                        continue;
                    }
                },
            };
            match self.watch(rv, &mut backoff).await {
                Next::Relist => {
                    self.metrics.relist();
                    self.synced.set_fresh(false);
                    info!(
                        "{} informer: resourceVersion {rv} is too old, relisting",
                        self.kind
                    );
                    resource_version = None;
                }
                Next::Rewatch => {}
                Next::Retry(err) => {
                    self.metrics.failure();
                    self.synced.set_fresh(false);
                    let delay = backoff.after(&err);
                    warn!(
                        "{} informer: watch failed (retry in {}): {err}",
                        self.kind,
                        secs(delay)
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
            objects.extend(page.items.into_iter().map(|obj| self.prepare(obj)));
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
    /// Anything the watch delivers resets `backoff`; if the cache was not
    /// fresh, it becomes fresh once the watch settles (see [`SETTLE`]).
    async fn watch(&self, rv: &mut String, backoff: &mut Backoff) -> Next {
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
        let mut settling = !self.synced.is_fresh();
        let mut seen_any = false;
        loop {
            let deadline = if settling {
                (Instant::now() + SETTLE).min(started + SETTLE_MAX)
            } else {
                Instant::now() + self.idle_timeout
            };
            let next = tokio::select! {
                biased;
                () = self.store.rewatch_requested() => {
                    debug!(
                        "{} informer: the cache is behind the API server, watching again from {rv}",
                        self.kind
                    );
                    return Next::Rewatch;
                }
                next = timeout_at(deadline, events.next()) => next,
            };
            let event = match next {
                Err(_) if settling => {
                    settling = false;
                    self.synced.set_fresh(true);
                    continue;
                }
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
                    backoff.reset();
                    return Next::Rewatch;
                }
                Ok(Some(event)) => event,
            };
            seen_any = true;
            match event {
                Ok(WatchEvent::Added(obj)) | Ok(WatchEvent::Modified(obj)) => {
                    backoff.reset();
                    self.metrics.watch_event();
                    let obj = self.prepare(obj);
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
                    backoff.reset();
                    self.metrics.watch_event();
                    let obj = self.prepare(obj);
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
                    backoff.reset();
                    *rv = bookmark.metadata.resource_version;
                    debug!("{} informer: bookmark at {rv}", self.kind);
                    if settling {
                        settling = false;
                        self.synced.set_fresh(true);
                    }
                }
                Ok(WatchEvent::Error(status)) if status_is_gone(&status) => return Next::Relist,
                Ok(WatchEvent::Error(status)) => return Next::Retry(Failure::Event(status)),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(code: u16, reason: &str, message: &str) -> Box<Status> {
        Status::failure(message, reason).with_code(code).boxed()
    }

    #[test]
    fn failures_read_as_one_line_with_code_and_message() {
        let forbidden = Failure::Api(kube_client::Error::Api(refusal(
            403,
            "Forbidden",
            "secrets is forbidden: User \"x\" cannot list",
        )));
        assert_eq!(
            forbidden.to_string(),
            "403 secrets is forbidden: User \"x\" cannot list"
        );
        assert!(forbidden.is_forbidden());

        let event = Failure::Event(refusal(500, "InternalError", "etcd is down"));
        assert_eq!(event.to_string(), "error event: 500 etcd is down");
        assert!(!event.is_forbidden());
        // A 403 as a watch error event is a 403 too.
        assert!(Failure::Event(refusal(403, "Forbidden", "no")).is_forbidden());

        // Without a message, the reason stands in.
        let bare = Failure::Api(kube_client::Error::Api(refusal(
            503,
            "ServiceUnavailable",
            "",
        )));
        assert_eq!(bare.to_string(), "503 ServiceUnavailable");

        for failure in [forbidden, event, bare] {
            let line = failure.to_string();
            assert!(!line.contains('\n') && !line.contains("Status"), "{line}");
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Connect(#[source] std::io::Error);

    #[test]
    fn transport_failures_name_their_causes_once() {
        let refused = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let failure = Failure::Api(kube_client::Error::Service(Box::new(Connect(refused()))));
        assert_eq!(
            failure.to_string(),
            "ServiceError: client error (Connect): refused"
        );
        let failure = Failure::Api(kube_client::Error::Service(Box::new(refused())));
        assert_eq!(failure.to_string(), "ServiceError: refused");
    }

    #[test]
    fn list_failure_keeps_the_servers_message() {
        let failure = ListFailure::of(&Failure::Api(kube_client::Error::Api(refusal(
            403,
            "Forbidden",
            "nope",
        ))));
        assert_eq!(
            failure,
            ListFailure {
                forbidden: true,
                message: "nope".into()
            }
        );
        let failure = ListFailure::of(&Failure::Timeout(Duration::from_secs(10)));
        assert_eq!(failure.message, "no response within 10s");
        assert!(!failure.forbidden);
    }

    #[test]
    fn delays_are_logged_in_tenths_of_seconds() {
        assert_eq!(secs(Duration::from_millis(1_749)), "1.7s");
        assert_eq!(secs(Duration::from_secs(30)), "30.0s");
    }
}
