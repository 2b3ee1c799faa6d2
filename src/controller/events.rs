//! Kubernetes Events about networks (core/v1, as `kubectl describe` shows them).
//!
//! A repeat of the same event (same object, type, reason and message) bumps the
//! count of the existing Event instead of creating a new one, like client-go's
//! event correlator, so a repeating error does not flood the API server.
//! Publishing never blocks or fails a reconcile.

use std::sync::Arc;

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

/// Records Events on BitcoinNetworks.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    instance: String,
    /// (object uid, type, reason, message) -> (namespace, Event name, count)
    seen: Arc<DashMap<Key, (String, String, i32)>>,
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
        let key = (
            regarding.uid.clone().unwrap_or_default(),
            type_,
            reason,
            message.clone(),
        );
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let repeat = self.seen.get(&key).map(|e| e.value().clone());
        if let Some((ns, name, count)) = repeat {
            let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
            let patch = json!({"count": count + 1, "lastTimestamp": now});
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
