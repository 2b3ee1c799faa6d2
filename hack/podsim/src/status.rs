//! Pure: the pod status podsim wants to report, and whether it differs from
//! what the API server has.
//!
//! The status is built from scratch each time, but timestamps
//! (`startTime`, `startedAt`, each condition's `lastTransitionTime`) are
//! carried over from the current status while the value they describe does
//! not change, so a status built twice from the same state is the same.
//! [`differs`] compares only what podsim decides, which is what makes the
//! worker patch only on real changes (e.g. a readiness flip).

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::BTreeMap;

pub const HOST_IP: &str = "127.0.0.1";

const OUR_CONDITIONS: [&str; 5] = [
    "PodReadyToStartContainers",
    "Initialized",
    "ContainersReady",
    "Ready",
    "PodScheduled",
];

/// What podsim knows about a pod it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Volumes not ready (config Secret missing, ...): Pending with
    /// containers waiting for `reason`.
    Creating { reason: String, message: String },
    /// Sandbox up with `pod_ip`; containers running.
    Running { pod_ip: String },
}

#[derive(Debug, Clone)]
pub struct View {
    pub phase: Phase,
    /// Readiness per container name (containers not listed: not ready).
    pub ready: BTreeMap<String, bool>,
    /// How often the pod's node was restarted after it exited (kubelet's
    /// restartCount of a container restarted in place).
    pub restarts: i32,
}

fn condition(
    cur: &PodStatus,
    type_: &str,
    ok: bool,
    reason: Option<String>,
    message: Option<String>,
    generation: Option<i64>,
    now: &Time,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let prev = cur.conditions.iter().flatten().find(|c| c.type_ == type_);
    let last_transition_time = match prev {
        Some(p) if p.status == status && p.last_transition_time.is_some() => {
            p.last_transition_time.clone()
        }
        _ => Some(now.clone()),
    };
    PodCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        last_transition_time,
        reason: if ok { None } else { reason },
        message: if ok { None } else { message },
        observed_generation: generation,
        last_probe_time: None,
    }
}

/// The status podsim wants for `pod` now.
pub fn desired(pod: &Pod, view: &View, now: &Time) -> PodStatus {
    let cur = pod.status.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let generation = pod.metadata.generation;
    let start_time = cur.start_time.clone().unwrap_or_else(|| now.clone());
    let running_ip = match &view.phase {
        Phase::Running { pod_ip } => Some(pod_ip.clone()),
        Phase::Creating { .. } => None,
    };

    let prev_status = |name: &str| {
        cur.container_statuses
            .iter()
            .flatten()
            .find(|s| s.name == name)
            .cloned()
    };
    let mut unready = Vec::new();
    let containers: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| {
            let image = c.image.clone().unwrap_or_default();
            match &view.phase {
                Phase::Running { .. } => {
                    let ready = view.ready.get(&c.name).copied().unwrap_or(false);
                    if !ready {
                        unready.push(c.name.clone());
                    }
                    let started_at = prev_status(&c.name)
                        .and_then(|s| s.state)
                        .and_then(|s| s.running)
                        .and_then(|r| r.started_at)
                        .unwrap_or_else(|| now.clone());
                    ContainerStatus {
                        name: c.name.clone(),
                        image_id: format!("podsim://{image}"),
                        image,
                        container_id: Some(format!("podsim://{uid}/{}", c.name)),
                        ready,
                        started: Some(true),
                        restart_count: view.restarts,
                        state: Some(ContainerState {
                            running: Some(ContainerStateRunning {
                                started_at: Some(started_at),
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }
                }
                Phase::Creating { reason, message } => {
                    unready.push(c.name.clone());
                    ContainerStatus {
                        name: c.name.clone(),
                        image,
                        image_id: String::new(),
                        ready: false,
                        started: Some(false),
                        restart_count: view.restarts,
                        state: Some(ContainerState {
                            waiting: Some(ContainerStateWaiting {
                                reason: Some(reason.clone()),
                                message: Some(message.clone()).filter(|m| !m.is_empty()),
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }
                }
            }
        })
        .collect();

    // Init containers "ran" instantly and succeeded.
    let init_containers: Option<Vec<ContainerStatus>> =
        spec.init_containers.as_ref().map(|inits| {
            inits
                .iter()
                .map(|c| {
                    let image = c.image.clone().unwrap_or_default();
                    let done = running_ip.is_some();
                    ContainerStatus {
                        name: c.name.clone(),
                        image_id: if done {
                            format!("podsim://{image}")
                        } else {
                            String::new()
                        },
                        image,
                        container_id: done.then(|| format!("podsim://{uid}/{}", c.name)),
                        ready: done,
                        started: Some(false),
                        restart_count: 0,
                        state: Some(if done {
                            ContainerState {
                                terminated: Some(ContainerStateTerminated {
                                    exit_code: 0,
                                    reason: Some("Completed".into()),
                                    started_at: Some(start_time.clone()),
                                    finished_at: Some(start_time.clone()),
                                    container_id: Some(format!("podsim://{uid}/{}", c.name)),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }
                        } else {
                            ContainerState {
                                waiting: Some(ContainerStateWaiting {
                                    reason: Some("PodInitializing".into()),
                                    message: None,
                                }),
                                ..Default::default()
                            }
                        }),
                        ..Default::default()
                    }
                })
                .collect()
        });

    let sandbox = running_ip.is_some();
    let initialized = sandbox || spec.init_containers.as_ref().is_none_or(Vec::is_empty);
    let containers_ready = sandbox && unready.is_empty();
    let gates_ok = spec.readiness_gates.iter().flatten().all(|g| {
        cur.conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == g.condition_type && c.status == "True")
    });
    let unready_msg = Some(format!(
        "containers with unready status: [{}]",
        unready.join(" ")
    ));
    let not_ready_reason = Some("ContainersNotReady".to_string());
    let mut conditions = vec![
        condition(
            &cur,
            "PodReadyToStartContainers",
            sandbox,
            None,
            None,
            generation,
            now,
        ),
        condition(
            &cur,
            "Initialized",
            initialized,
            Some("ContainersNotInitialized".into()),
            None,
            generation,
            now,
        ),
        condition(
            &cur,
            "Ready",
            containers_ready && gates_ok,
            if containers_ready {
                Some("ReadinessGatesNotReady".into())
            } else {
                not_ready_reason.clone()
            },
            if containers_ready {
                None
            } else {
                unready_msg.clone()
            },
            generation,
            now,
        ),
        condition(
            &cur,
            "ContainersReady",
            containers_ready,
            not_ready_reason,
            unready_msg,
            generation,
            now,
        ),
        condition(&cur, "PodScheduled", true, None, None, generation, now),
    ];
    // Conditions owned by others (readiness gates, DisruptionTarget...) stay.
    conditions.extend(
        cur.conditions
            .iter()
            .flatten()
            .filter(|c| !OUR_CONDITIONS.contains(&c.type_.as_str()))
            .cloned(),
    );

    let pod_ip = running_ip.clone().or_else(|| cur.pod_ip.clone());
    PodStatus {
        phase: Some(if sandbox { "Running" } else { "Pending" }.to_string()),
        observed_generation: generation,
        host_ip: Some(HOST_IP.to_string()),
        host_ips: Some(vec![HostIP {
            ip: HOST_IP.to_string(),
        }]),
        pod_ips: pod_ip.as_ref().map(|ip| vec![PodIP { ip: ip.clone() }]),
        pod_ip,
        start_time: Some(start_time),
        conditions: Some(conditions),
        container_statuses: Some(containers),
        init_container_statuses: init_containers,
        ..Default::default()
    }
}

/// The parts of a status podsim decides, for comparison.
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    phase: Option<String>,
    observed_generation: Option<i64>,
    pod_ip: Option<String>,
    pod_ips: Vec<String>,
    host_ip: Option<String>,
    host_ips: Vec<String>,
    has_start_time: bool,
    conditions: BTreeMap<String, String>,
    containers: Vec<ContainerSummary>,
    init_containers: Vec<ContainerSummary>,
}

#[derive(Debug, PartialEq, Eq)]
struct ContainerSummary {
    name: String,
    image: String,
    container_id: Option<String>,
    ready: bool,
    started: Option<bool>,
    restart_count: i32,
    state: String,
}

fn state_word(s: &Option<ContainerState>) -> String {
    match s {
        Some(ContainerState {
            running: Some(_), ..
        }) => "running".into(),
        Some(ContainerState {
            terminated: Some(t),
            ..
        }) => format!("terminated:{}", t.exit_code),
        Some(ContainerState {
            waiting: Some(w), ..
        }) => format!("waiting:{}", w.reason.clone().unwrap_or_default()),
        _ => String::new(),
    }
}

fn summary(s: &PodStatus) -> Summary {
    let containers = |list: &Option<Vec<ContainerStatus>>| {
        list.iter()
            .flatten()
            .map(|c| ContainerSummary {
                name: c.name.clone(),
                image: c.image.clone(),
                container_id: c.container_id.clone(),
                ready: c.ready,
                started: c.started,
                restart_count: c.restart_count,
                state: state_word(&c.state),
            })
            .collect()
    };
    Summary {
        phase: s.phase.clone(),
        observed_generation: s.observed_generation,
        pod_ip: s.pod_ip.clone(),
        pod_ips: s.pod_ips.iter().flatten().map(|p| p.ip.clone()).collect(),
        host_ip: s.host_ip.clone(),
        host_ips: s.host_ips.iter().flatten().map(|p| p.ip.clone()).collect(),
        has_start_time: s.start_time.is_some(),
        conditions: s
            .conditions
            .iter()
            .flatten()
            .filter(|c| OUR_CONDITIONS.contains(&c.type_.as_str()))
            .map(|c| (c.type_.clone(), c.status.clone()))
            .collect(),
        containers: containers(&s.container_statuses),
        init_containers: containers(&s.init_container_statuses),
    }
}

/// True when `want` says something the pod's current status does not.
/// (The API server drops `observedGeneration` when its feature is off, so
/// an absent one in the current status is not a difference.)
pub fn differs(pod: &Pod, want: &PodStatus) -> bool {
    let cur = pod.status.clone().unwrap_or_default();
    let mut want = summary(want);
    let cur = summary(&cur);
    if cur.observed_generation.is_none() {
        want.observed_generation = None;
    }
    cur != want
}

/// A JSON merge patch for the `status` subresource. Lists are replaced
/// whole, which is what we want for containerStatuses (their `state` must
/// not keep an old `waiting` next to a new `running`) and podIPs.
pub fn merge_patch(status: &PodStatus) -> serde_json::Value {
    serde_json::json!({ "status": status })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn t(s: &str) -> Time {
        Time(s.parse::<Timestamp>().unwrap())
    }

    fn pod(extra_spec: serde_json::Value, status: serde_json::Value) -> Pod {
        let mut spec = json!({"nodeName": "podsim", "containers": [
            {"name": "bitcoind", "image": "bitcoin:27", "readinessProbe": {"exec": {"command": ["bitcoin-cli", "getnetworkinfo"]}}},
            {"name": "sidecar", "image": "busybox"}
        ]});
        for (k, v) in extra_spec.as_object().unwrap() {
            spec[k] = v.clone();
        }
        serde_json::from_value(json!({
            "metadata": {"name": "net-sts-0", "namespace": "ns", "uid": "u-1", "generation": 1},
            "spec": spec,
            "status": status
        }))
        .unwrap()
    }

    fn running(ip: &str, ready: &[(&str, bool)]) -> View {
        View {
            phase: Phase::Running { pod_ip: ip.into() },
            ready: ready.iter().map(|(n, r)| (n.to_string(), *r)).collect(),
            restarts: 0,
        }
    }

    fn cond<'a>(s: &'a PodStatus, type_: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap()
    }

    #[test]
    fn fresh_pod_running_not_ready() {
        let p = pod(
            json!({}),
            json!({"phase": "Pending", "qosClass": "BestEffort"}),
        );
        let now = t("2026-01-02T03:04:05Z");
        let s = desired(&p, &running("127.1.0.2", &[("sidecar", true)]), &now);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("127.1.0.2"));
        assert_eq!(s.pod_ips.as_ref().unwrap()[0].ip, "127.1.0.2");
        assert_eq!(s.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(s.host_ips.as_ref().unwrap()[0].ip, "127.0.0.1");
        assert_eq!(s.start_time, Some(now.clone()));
        assert_eq!(s.observed_generation, Some(1));
        let cs = s.container_statuses.as_ref().unwrap();
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0].name, "bitcoind");
        assert_eq!(cs[0].container_id.as_deref(), Some("podsim://u-1/bitcoind"));
        assert_eq!(cs[0].image_id, "podsim://bitcoin:27");
        assert!(!cs[0].ready);
        assert!(cs[1].ready);
        assert_eq!(cs[0].started, Some(true));
        assert_eq!(cs[0].restart_count, 0);
        assert_eq!(
            cs[0]
                .state
                .as_ref()
                .unwrap()
                .running
                .as_ref()
                .unwrap()
                .started_at,
            Some(now.clone())
        );
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(
            cond(&s, "Ready").message.as_deref(),
            Some("containers with unready status: [bitcoind]")
        );
        assert_eq!(cond(&s, "ContainersReady").status, "False");
        for ok in ["PodScheduled", "Initialized", "PodReadyToStartContainers"] {
            assert_eq!(cond(&s, ok).status, "True", "{ok}");
            assert_eq!(cond(&s, ok).last_transition_time, Some(now.clone()));
        }
        assert!(differs(&p, &s));
        let patch = merge_patch(&s);
        assert_eq!(patch["status"]["phase"], "Running");
        assert_eq!(
            patch["status"]["containerStatuses"][0]["state"]["running"]["startedAt"],
            "2026-01-02T03:04:05Z"
        );
        assert!(
            patch["status"].get("qosClass").is_none(),
            "untouched fields are not in the patch"
        );
    }

    #[test]
    fn rebuilding_from_own_status_is_stable_and_flip_keeps_other_timestamps() {
        let t0 = t("2026-01-02T03:04:05Z");
        let t1 = t("2026-01-02T03:05:00Z");
        let mut p = pod(json!({}), json!({}));
        let view = running("127.1.0.2", &[("sidecar", true)]);
        let s0 = desired(&p, &view, &t0);
        p.status = Some(s0.clone());
        // same state later: identical, nothing to patch
        let s1 = desired(&p, &view, &t1);
        assert_eq!(s1, s0);
        assert!(!differs(&p, &s1));
        // readiness flips: only Ready/ContainersReady transition at t1
        let s2 = desired(
            &p,
            &running("127.1.0.2", &[("sidecar", true), ("bitcoind", true)]),
            &t1,
        );
        assert!(differs(&p, &s2));
        assert_eq!(cond(&s2, "Ready").status, "True");
        assert_eq!(cond(&s2, "Ready").last_transition_time, Some(t1.clone()));
        assert_eq!(cond(&s2, "Ready").reason, None);
        assert_eq!(
            cond(&s2, "ContainersReady").last_transition_time,
            Some(t1.clone())
        );
        assert_eq!(
            cond(&s2, "PodScheduled").last_transition_time,
            Some(t0.clone())
        );
        assert_eq!(s2.start_time, Some(t0.clone()));
        let started = &s2.container_statuses.as_ref().unwrap()[0]
            .state
            .as_ref()
            .unwrap()
            .running
            .as_ref()
            .unwrap()
            .started_at;
        assert_eq!(started, &Some(t0));
    }

    /// A node restarted in place counts as a container restart, and that
    /// alone is a change worth a patch.
    #[test]
    fn restarts_are_reported_as_restart_count() {
        let p = pod(json!({}), json!({}));
        let now = t("2024-01-01T00:00:00Z");
        let mut view = running("127.1.0.2", &[("bitcoind", true), ("sidecar", true)]);
        let first = desired(&p, &view, &now);
        assert!(first
            .container_statuses
            .iter()
            .flatten()
            .all(|c| c.restart_count == 0));
        view.restarts = 2;
        let again = desired(&p, &view, &now);
        assert!(again
            .container_statuses
            .iter()
            .flatten()
            .all(|c| c.restart_count == 2));
        let mut reported = p.clone();
        reported.status = Some(first);
        assert!(differs(&reported, &again));
    }

    #[test]
    fn creating_is_pending_with_waiting_containers() {
        let p = pod(json!({}), json!({}));
        let view = View {
            phase: Phase::Creating {
                reason: "ContainerCreating".into(),
                message: "secret \"x\" not found".into(),
            },
            ready: BTreeMap::new(),
            restarts: 0,
        };
        let now = t("2026-01-02T03:04:05Z");
        let s = desired(&p, &view, &now);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(s.pod_ip, None);
        assert_eq!(s.pod_ips, None);
        assert_eq!(s.host_ip.as_deref(), Some("127.0.0.1"));
        let c = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            c.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("ContainerCreating")
        );
        assert_eq!(c.container_id, None);
        assert_eq!(cond(&s, "PodReadyToStartContainers").status, "False");
        assert_eq!(cond(&s, "Initialized").status, "True");
        assert_eq!(cond(&s, "Ready").status, "False");
        // waiting -> running: the merge patch replaces the state object whole
        let mut p2 = p.clone();
        p2.status = Some(s);
        let s2 = desired(&p2, &running("127.1.0.9", &[]), &now);
        assert!(differs(&p2, &s2));
        let patch = merge_patch(&s2);
        assert!(patch["status"]["containerStatuses"][0]["state"]
            .get("waiting")
            .is_none());
    }

    #[test]
    fn foreign_conditions_readiness_gates_and_init_containers() {
        let p = pod(
            json!({"readinessGates": [{"conditionType": "example.com/gate"}], "initContainers": [{"name": "init", "image": "busybox"}]}),
            json!({"conditions": [{"type": "example.com/gate", "status": "False"}]}),
        );
        let view = running("127.1.0.2", &[("bitcoind", true), ("sidecar", true)]);
        let now = t("2026-01-02T03:04:05Z");
        let s = desired(&p, &view, &now);
        assert_eq!(cond(&s, "ContainersReady").status, "True");
        assert_eq!(cond(&s, "Ready").status, "False", "gate not passed");
        assert_eq!(
            cond(&s, "Ready").reason.as_deref(),
            Some("ReadinessGatesNotReady")
        );
        assert_eq!(cond(&s, "example.com/gate").status, "False", "kept");
        let init = &s.init_container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            init.state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("Completed")
        );
        let mut p2 = p.clone();
        p2.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "True".into();
        assert_eq!(cond(&desired(&p2, &view, &now), "Ready").status, "True");
    }

    #[test]
    fn absent_observed_generation_is_not_a_difference() {
        let mut p = pod(json!({}), json!({}));
        let view = running("127.1.0.2", &[]);
        let s = desired(&p, &view, &t("2026-01-02T03:04:05Z"));
        let mut stored = s.clone();
        stored.observed_generation = None;
        p.status = Some(stored);
        assert!(!differs(&p, &s));
    }
}
