//! Kubernetes Events about networks (core/v1, as `kubectl describe` shows them).
//!
//! Events are correlated like client-go's `EventCorrelator` does, so a
//! repeating error does not flood the API server: a repeat of the same event
//! (same object, type, reason and message) bumps the count of the existing
//! Event instead of creating a new one, and once an object has had
//! [`MAX_SIMILAR`] different messages for one type and reason within
//! [`SIMILAR_WINDOW`], further ones go into a single Event whose message
//! starts with `(combined from similar events): `. Publishing never blocks or
//! fails a reconcile.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube_client::api::{Patch, PatchParams, PostParams};
use kube_client::{Api, Client};
use serde_json::json;

use crate::api::BitcoinNetwork;

const COMPONENT: &str = "bitcoin-controller";
/// Upper bound on remembered events; the cache is cleared when it is reached.
const MAX_REMEMBERED: usize = 4096;
/// Different messages of one object, type and reason within
/// [`SIMILAR_WINDOW`] before they are combined (client-go's values).
const MAX_SIMILAR: usize = 10;
const SIMILAR_WINDOW: Duration = Duration::from_secs(600);
const COMBINED: &str = "(combined from similar events)";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

type Key = (String, EventType, &'static str, String);

/// client-go's `EventAggregator`: tracks the different messages of each
/// (object uid, type, reason) while they keep coming within the window.
/// Pure; the caller gives the time.
#[derive(Default)]
struct Aggregator {
    similar: HashMap<(String, EventType, &'static str), (Instant, HashSet<String>)>,
}

impl Aggregator {
    /// The dedup key and the message of the Event this occurrence goes to.
    fn observe(
        &mut self,
        uid: String,
        type_: EventType,
        reason: &'static str,
        message: String,
        now: Instant,
    ) -> (Key, String) {
        if self.similar.len() >= MAX_REMEMBERED {
            self.similar.clear();
        }
        let (last, messages) = self
            .similar
            .entry((uid.clone(), type_, reason))
            .or_insert_with(|| (now, HashSet::new()));
        // The window slides: it ends SIMILAR_WINDOW after the latest one.
        if now.duration_since(*last) > SIMILAR_WINDOW {
            messages.clear();
        }
        *last = now;
        messages.insert(message.clone());
        if messages.len() < MAX_SIMILAR {
            return ((uid, type_, reason, message.clone()), message);
        }
        // Keep the set from growing past the limit (client-go pops any one).
        if let Some(one) = messages.iter().next().cloned() {
            messages.remove(&one);
        }
        (
            (uid, type_, reason, COMBINED.to_owned()),
            format!("{COMBINED}: {message}"),
        )
    }
}

/// Records Events on BitcoinNetworks.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    instance: String,
    /// (object uid, type, reason, message) -> (namespace, Event name, count)
    seen: Arc<DashMap<Key, (String, String, i32)>>,
    aggregator: Arc<Mutex<Aggregator>>,
}

impl Recorder {
    pub fn new(client: Client) -> Self {
        let instance = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| COMPONENT.to_owned());
        Recorder {
            client,
            instance,
            seen: Arc::new(DashMap::new()),
            aggregator: Arc::default(),
        }
    }

    /// Publishes an Event in the background. `reason` is CamelCase; `message`
    /// must never contain credentials.
    pub fn publish(
        &self,
        net: &BitcoinNetwork,
        type_: EventType,
        reason: &'static str,
        message: String,
    ) {
        let recorder = self.clone();
        let net_ref = ObjectReference {
            api_version: Some(crate::api::API_VERSION.to_owned()),
            kind: Some(crate::api::KIND.to_owned()),
            name: net.metadata.name.clone(),
            namespace: net.metadata.namespace.clone(),
            uid: net.metadata.uid.clone(),
            resource_version: net.metadata.resource_version.clone(),
            ..ObjectReference::default()
        };
        tokio::spawn(async move {
            if let Err(err) = recorder.record(net_ref, type_, reason, message).await {
                log::warn!("could not record event {reason}: {err}");
            }
        });
    }

    async fn record(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: &'static str,
        message: String,
    ) -> Result<(), kube_client::Error> {
        let namespace = regarding.namespace.clone().unwrap_or_default();
        let (key, message) = self
            .aggregator
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .observe(
                regarding.uid.clone().unwrap_or_default(),
                type_,
                reason,
                message,
                Instant::now(),
            );
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let repeat = self.seen.get(&key).map(|e| e.value().clone());
        if let Some((ns, name, count)) = repeat {
            let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
            // A combined Event shows the latest message.
            let patch = json!({"count": count + 1, "lastTimestamp": now, "message": message});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.seen.insert(key, (ns, name, count + 1));
                    return Ok(());
                }
                // Expired (events have a TTL): fall through and create a new one.
                Err(kube_client::Error::Api(s)) if s.code == 404 => {}
                Err(err) => return Err(err),
            }
        }
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!(
                    "{}.",
                    regarding.name.as_deref().unwrap_or(COMPONENT)
                )),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: regarding,
            reason: Some(reason.to_owned()),
            message: Some(message),
            type_: Some(type_.as_str().to_owned()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(EventSource {
                component: Some(COMPONENT.to_owned()),
                host: None,
            }),
            reporting_component: Some(COMPONENT.to_owned()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let created = api.create(&PostParams::default(), &event).await?;
        if self.seen.len() >= MAX_REMEMBERED {
            self.seen.clear();
        }
        let name = created.metadata.name.unwrap_or_default();
        self.seen.insert(key, (namespace, name, 1));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observe(a: &mut Aggregator, message: &str, now: Instant) -> (String, String) {
        let (key, message) = a.observe(
            "uid".into(),
            EventType::Warning,
            "NodeSyncFailed",
            message.into(),
            now,
        );
        (key.3, message)
    }

    #[test]
    fn repeats_keep_their_message_and_key() {
        let mut a = Aggregator::default();
        let t0 = Instant::now();
        for i in 0..50 {
            let (key, message) = observe(&mut a, "same", t0 + Duration::from_secs(i));
            assert_eq!((key.as_str(), message.as_str()), ("same", "same"));
        }
    }

    #[test]
    fn many_different_messages_are_combined_into_one_event() {
        let mut a = Aggregator::default();
        let t0 = Instant::now();
        let mut keys = Vec::new();
        for i in 0..MAX_SIMILAR + 5 {
            let (key, message) = observe(&mut a, &format!("error {i}"), t0);
            if i + 1 < MAX_SIMILAR {
                assert_eq!(message, format!("error {i}"));
            } else {
                assert_eq!(message, format!("{COMBINED}: error {i}"));
            }
            keys.push(key);
        }
        keys.sort();
        keys.dedup();
        // Nine Events of their own, then one combined Event for the rest.
        assert_eq!(keys.len(), MAX_SIMILAR);
        // Another object, type or reason is counted apart.
        let (key, _) = a.observe(
            "other".into(),
            EventType::Warning,
            "NodeSyncFailed",
            "error 99".into(),
            t0,
        );
        assert_eq!(key.3, "error 99");
    }

    #[test]
    fn the_window_slides_with_the_latest_event() {
        let mut a = Aggregator::default();
        let mut now = Instant::now();
        for i in 0..MAX_SIMILAR - 1 {
            // Always within the window of the previous one: still counted.
            now += SIMILAR_WINDOW - Duration::from_secs(1);
            assert_eq!(observe(&mut a, &format!("m{i}"), now).0, format!("m{i}"));
        }
        now += SIMILAR_WINDOW - Duration::from_secs(1);
        assert_eq!(observe(&mut a, "one more", now).0, COMBINED);
        // After a quiet window the count starts over.
        now += SIMILAR_WINDOW + Duration::from_secs(1);
        assert_eq!(observe(&mut a, "fresh", now).0, "fresh");
    }
}
