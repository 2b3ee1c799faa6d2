//! Finding `bitcoin.conf` among a pod's Secret and ConfigMap volumes.
//!
//! A volume source is a candidate when the file it would mount as
//! `bitcoin.conf` can be named without reading the object: either it has no
//! `items` (every key becomes a file, so the key must be `bitcoin.conf`) or
//! one of its items has a `path` whose file name is `bitcoin.conf` (then that
//! item's `key` is read). Projected volumes are searched the same way, so the
//! service account volume (`items: [ca.crt]`) is never fetched.

use k8s_openapi::api::core::v1::{KeyToPath, Pod};
use std::collections::BTreeMap;

pub const CONF_FILE: &str = "bitcoin.conf";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Secret,
    ConfigMap,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfSource {
    pub kind: Kind,
    pub name: String,
    /// The data key holding the file.
    pub key: String,
    /// The key was named in `items` (kubelet fails the mount if it is absent).
    pub explicit: bool,
    pub optional: bool,
}

impl std::fmt::Display for ConfSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Secret => "secret",
            Kind::ConfigMap => "configmap",
        };
        write!(f, "{kind} {:?} key {:?}", self.name, self.key)
    }
}

impl ConfSource {
    fn object(&self) -> String {
        let kind = match self.kind {
            Kind::Secret => "secret",
            Kind::ConfigMap => "configmap",
        };
        format!("{kind} {:?}", self.name)
    }
}

fn candidate_key(items: Option<&Vec<KeyToPath>>) -> Option<(String, bool)> {
    match items {
        None => Some((CONF_FILE.to_string(), false)),
        Some(items) if items.is_empty() => Some((CONF_FILE.to_string(), false)),
        Some(items) => items
            .iter()
            .find(|item| item.path.rsplit('/').next() == Some(CONF_FILE))
            .map(|item| (item.key.clone(), true)),
    }
}

fn push(
    out: &mut Vec<ConfSource>,
    kind: Kind,
    name: Option<&String>,
    items: Option<&Vec<KeyToPath>>,
    optional: Option<bool>,
) {
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return;
    };
    if let Some((key, explicit)) = candidate_key(items) {
        out.push(ConfSource {
            kind,
            name: name.clone(),
            key,
            explicit,
            optional: optional.unwrap_or(false),
        });
    }
}

/// Every place in the pod's volumes that could hold `bitcoin.conf`, in
/// volume order.
pub fn conf_sources(pod: &Pod) -> Vec<ConfSource> {
    let mut out = Vec::new();
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    for v in volumes.into_iter().flatten() {
        if let Some(s) = &v.secret {
            push(
                &mut out,
                Kind::Secret,
                s.secret_name.as_ref(),
                s.items.as_ref(),
                s.optional,
            );
        }
        if let Some(c) = &v.config_map {
            push(
                &mut out,
                Kind::ConfigMap,
                Some(&c.name),
                c.items.as_ref(),
                c.optional,
            );
        }
        if let Some(p) = &v.projected {
            for src in p.sources.iter().flatten() {
                if let Some(s) = &src.secret {
                    push(
                        &mut out,
                        Kind::Secret,
                        Some(&s.name),
                        s.items.as_ref(),
                        s.optional,
                    );
                }
                if let Some(c) = &src.config_map {
                    push(
                        &mut out,
                        Kind::ConfigMap,
                        Some(&c.name),
                        c.items.as_ref(),
                        c.optional,
                    );
                }
            }
        }
    }
    out
}

/// What one source gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Pick {
    Found(String),
    /// Not here, and that is fine (optional, or the key is simply absent).
    Skip,
    /// kubelet would not mount the volume: the pod stays ContainerCreating.
    Blocked(String),
}

/// Decides for one source given the object's data (`None`: it does not
/// exist). Pure, so the ContainerCreating rules are testable.
pub fn pick(source: &ConfSource, data: Option<&BTreeMap<String, Vec<u8>>>) -> Pick {
    let Some(data) = data else {
        return if source.optional {
            Pick::Skip
        } else {
            Pick::Blocked(format!("{} not found", source.object()))
        };
    };
    match data.get(&source.key) {
        Some(bytes) => match String::from_utf8(bytes.clone()) {
            Ok(text) => Pick::Found(text),
            Err(_) => Pick::Blocked(format!("{source}: not UTF-8")),
        },
        None if source.explicit && !source.optional => {
            Pick::Blocked(format!("{}: key not found", source))
        }
        None => Pick::Skip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(volumes: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [{"name": "c"}], "volumes": volumes}
        }))
        .unwrap()
    }

    fn src(kind: Kind, name: &str, key: &str, explicit: bool, optional: bool) -> ConfSource {
        ConfSource {
            kind,
            name: name.into(),
            key: key.into(),
            explicit,
            optional,
        }
    }

    #[test]
    fn controller_pod_template_volume() {
        let p = pod(json!([
            {"name": "config", "secret": {"secretName": "net-config"}},
            {"name": "data", "emptyDir": {}}
        ]));
        assert_eq!(
            conf_sources(&p),
            vec![src(
                Kind::Secret,
                "net-config",
                "bitcoin.conf",
                false,
                false
            )]
        );
    }

    #[test]
    fn items_select_the_key_mounted_as_bitcoin_conf() {
        let p = pod(json!([
            {"name": "a", "configMap": {"name": "cm", "items": [{"key": "node.conf", "path": "conf/bitcoin.conf"}], "optional": true}},
            {"name": "b", "secret": {"secretName": "other", "items": [{"key": "x", "path": "x"}]}},
            {"name": "c", "secret": {"secretName": "empty-items", "items": []}}
        ]));
        assert_eq!(
            conf_sources(&p),
            vec![
                src(Kind::ConfigMap, "cm", "node.conf", true, true),
                src(Kind::Secret, "empty-items", "bitcoin.conf", false, false),
            ]
        );
    }

    #[test]
    fn projected_sources_and_service_account_volume() {
        let p = pod(json!([
            {"name": "kube-api-access", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}
            ]}},
            {"name": "conf", "projected": {"sources": [{"secret": {"name": "s"}}]}}
        ]));
        assert_eq!(
            conf_sources(&p),
            vec![src(Kind::Secret, "s", "bitcoin.conf", false, false)]
        );
    }

    #[test]
    fn no_volumes_means_no_sources() {
        let p: Pod =
            serde_json::from_value(json!({"spec": {"containers": [{"name": "c"}]}})).unwrap();
        assert!(conf_sources(&p).is_empty());
    }

    #[test]
    fn pick_rules() {
        let data: BTreeMap<String, Vec<u8>> =
            [("bitcoin.conf".to_string(), b"regtest=1\n".to_vec())].into();
        let other: BTreeMap<String, Vec<u8>> = [("x".to_string(), b"y".to_vec())].into();
        let plain = src(Kind::Secret, "s", "bitcoin.conf", false, false);
        assert_eq!(pick(&plain, Some(&data)), Pick::Found("regtest=1\n".into()));
        assert_eq!(pick(&plain, Some(&other)), Pick::Skip);
        assert_eq!(
            pick(&plain, None),
            Pick::Blocked("secret \"s\" not found".into())
        );
        let optional = src(Kind::Secret, "s", "bitcoin.conf", false, true);
        assert_eq!(pick(&optional, None), Pick::Skip);
        let explicit = src(Kind::ConfigMap, "c", "bitcoin.conf", true, false);
        assert!(
            matches!(pick(&explicit, Some(&other)), Pick::Blocked(m) if m.contains("key not found"))
        );
        let binary: BTreeMap<String, Vec<u8>> =
            [("bitcoin.conf".to_string(), vec![0xff, 0xfe])].into();
        assert!(matches!(pick(&plain, Some(&binary)), Pick::Blocked(_)));
    }
}
