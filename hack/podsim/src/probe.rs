//! Readiness probes: what to run (from the container spec, with Kubernetes'
//! defaults) and the success/failure threshold state machine. Running them
//! is in `net.rs`.

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// An exec probe mentioning `getnetworkinfo`: that RPC call against the
    /// pod's node, with its cookie.
    GetNetworkInfo,
    /// Any other exec probe: nothing can run it here, it succeeds.
    ExecOk,
    /// TCP connect; `host` empty means the pod IP.
    Tcp { host: Option<String>, port: u16 },
    /// HTTP GET (HTTPS is only connected to, not spoken).
    Http {
        host: Option<String>,
        port: u16,
        path: String,
        https: bool,
    },
    /// Cannot be run (unresolvable named port, no handler): always fails.
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub action: Action,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

fn secs(value: Option<i32>, default: u64, min: u64) -> Duration {
    let v = match value {
        Some(v) if v > 0 => v as u64,
        Some(_) if min == 0 => 0,
        _ => default,
    };
    Duration::from_secs(v.max(min))
}

fn count(value: Option<i32>, default: u32) -> u32 {
    match value {
        Some(v) if v > 0 => v as u32,
        _ => default,
    }
}

fn resolve_port(container: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid port {n}")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("port {name:?} not found in container {:?}", container.name))
        }
    }
}

fn action(container: &Container, probe: &Probe) -> Action {
    let port = |p: &IntOrString| resolve_port(container, p);
    if let Some(exec) = &probe.exec {
        let mentions = exec
            .command
            .iter()
            .flatten()
            .any(|arg| arg.contains("getnetworkinfo"));
        return if mentions {
            Action::GetNetworkInfo
        } else {
            Action::ExecOk
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        return match port(&tcp.port) {
            Ok(port) => Action::Tcp {
                host: tcp.host.clone().filter(|h| !h.is_empty()),
                port,
            },
            Err(e) => Action::Invalid(e),
        };
    }
    if let Some(http) = &probe.http_get {
        return match port(&http.port) {
            Ok(port) => Action::Http {
                host: http.host.clone().filter(|h| !h.is_empty()),
                port,
                path: http
                    .path
                    .clone()
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "/".into()),
                https: http
                    .scheme
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case("https")),
            },
            Err(e) => Action::Invalid(e),
        };
    }
    if let Some(grpc) = &probe.grpc {
        // No gRPC health client here: a connect is the closest cheap check.
        return match u16::try_from(grpc.port) {
            Ok(port) if port > 0 => Action::Tcp { host: None, port },
            _ => Action::Invalid(format!("invalid grpc port {}", grpc.port)),
        };
    }
    Action::Invalid("probe has no handler".into())
}

/// The readiness probe of a container, defaults filled in as the API
/// server does (period 10 s, timeout 1 s, success 1, failure 3).
pub fn readiness_spec(container: &Container) -> Option<ProbeSpec> {
    let probe = container.readiness_probe.as_ref()?;
    Some(ProbeSpec {
        action: action(container, probe),
        initial_delay: secs(probe.initial_delay_seconds, 0, 0),
        period: secs(probe.period_seconds, 10, 1),
        timeout: secs(probe.timeout_seconds, 1, 1),
        success_threshold: count(probe.success_threshold, 1),
        failure_threshold: count(probe.failure_threshold, 3),
    })
}

/// kubelet's readiness bookkeeping for one container: the first probe runs
/// `initialDelaySeconds` after the container started, then every
/// `periodSeconds`; readiness flips after `successThreshold` consecutive
/// successes or `failureThreshold` consecutive failures.
#[derive(Debug)]
pub struct Tracker {
    pub spec: ProbeSpec,
    ready: bool,
    successes: u32,
    failures: u32,
    next: Instant,
}

impl Tracker {
    pub fn new(spec: ProbeSpec, started: Instant, ready: bool) -> Tracker {
        let next = started + spec.initial_delay;
        Tracker {
            spec,
            ready,
            successes: 0,
            failures: 0,
            next,
        }
    }

    pub fn ready(&self) -> bool {
        self.ready
    }

    pub fn next_at(&self) -> Instant {
        self.next
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// Records a probe result taken at `now`; returns true when readiness
    /// flipped.
    pub fn record(&mut self, success: bool, now: Instant) -> bool {
        self.next = now + self.spec.period;
        let before = self.ready;
        if success {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.successes >= self.spec.success_threshold {
                self.ready = true;
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= self.spec.failure_threshold {
                self.ready = false;
            }
        }
        before != self.ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(value: serde_json::Value) -> Container {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn defaults_match_kubernetes() {
        let c = container(
            json!({"name": "bitcoind", "readinessProbe": {"exec": {"command": [
            "bitcoin-cli", "-conf=/etc/bitcoin/bitcoin.conf", "-datadir=/data", "getnetworkinfo"]}}}),
        );
        let spec = readiness_spec(&c).unwrap();
        assert_eq!(
            spec,
            ProbeSpec {
                action: Action::GetNetworkInfo,
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            }
        );
    }

    #[test]
    fn explicit_values_are_honoured() {
        let c = container(json!({"name": "c", "readinessProbe": {
            "exec": {"command": ["sh", "-c", "true"]},
            "initialDelaySeconds": 5, "periodSeconds": 2, "timeoutSeconds": 3,
            "successThreshold": 2, "failureThreshold": 1}}));
        let spec = readiness_spec(&c).unwrap();
        assert_eq!(spec.action, Action::ExecOk);
        assert_eq!(spec.initial_delay, Duration::from_secs(5));
        assert_eq!(spec.period, Duration::from_secs(2));
        assert_eq!(spec.timeout, Duration::from_secs(3));
        assert_eq!((spec.success_threshold, spec.failure_threshold), (2, 1));
        // zero / negative values fall back to defaults (period/timeout at least 1 s)
        let c = container(json!({"name": "c", "readinessProbe": {
            "exec": {"command": ["x"]}, "periodSeconds": 0, "timeoutSeconds": -1, "failureThreshold": 0}}));
        let spec = readiness_spec(&c).unwrap();
        assert_eq!(
            (spec.period, spec.timeout, spec.failure_threshold),
            (Duration::from_secs(10), Duration::from_secs(1), 3)
        );
    }

    #[test]
    fn no_probe_no_spec() {
        assert!(readiness_spec(&container(json!({"name": "c"}))).is_none());
    }

    #[test]
    fn tcp_and_http_actions_resolve_named_ports() {
        let c = container(json!({"name": "c",
            "ports": [{"name": "rpc", "containerPort": 18443}, {"name": "web", "containerPort": 8080}],
            "readinessProbe": {"tcpSocket": {"port": "rpc"}}}));
        assert_eq!(
            readiness_spec(&c).unwrap().action,
            Action::Tcp {
                host: None,
                port: 18443
            }
        );
        let c = container(
            json!({"name": "c", "ports": [{"name": "web", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"port": "web", "path": "/healthz", "host": "127.0.0.1"}}}),
        );
        assert_eq!(
            readiness_spec(&c).unwrap().action,
            Action::Http {
                host: Some("127.0.0.1".into()),
                port: 8080,
                path: "/healthz".into(),
                https: false
            }
        );
        let c = container(
            json!({"name": "c", "readinessProbe": {"httpGet": {"port": 80, "scheme": "HTTPS"}}}),
        );
        assert_eq!(
            readiness_spec(&c).unwrap().action,
            Action::Http {
                host: None,
                port: 80,
                path: "/".into(),
                https: true
            }
        );
        let c = container(json!({"name": "c", "readinessProbe": {"tcpSocket": {"port": "nope"}}}));
        assert!(matches!(
            readiness_spec(&c).unwrap().action,
            Action::Invalid(_)
        ));
    }

    fn spec(success: u32, failure: u32) -> ProbeSpec {
        ProbeSpec {
            action: Action::ExecOk,
            initial_delay: Duration::from_secs(5),
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn tracker_schedule_and_thresholds() {
        let t0 = Instant::now();
        let mut t = Tracker::new(spec(2, 3), t0, false);
        assert!(!t.due(t0));
        assert!(t.due(t0 + Duration::from_secs(5)));
        assert!(!t.record(true, t0 + Duration::from_secs(5)));
        assert_eq!(t.next_at(), t0 + Duration::from_secs(15));
        assert!(
            t.record(true, t0 + Duration::from_secs(15)),
            "second success flips to ready"
        );
        assert!(t.ready());
        assert!(!t.record(false, t0 + Duration::from_secs(25)));
        assert!(!t.record(false, t0 + Duration::from_secs(35)));
        assert!(
            !t.record(true, t0 + Duration::from_secs(45)),
            "a success resets the failure count"
        );
        assert!(!t.record(false, t0 + Duration::from_secs(55)));
        assert!(!t.record(false, t0 + Duration::from_secs(65)));
        assert!(
            t.record(false, t0 + Duration::from_secs(75)),
            "third consecutive failure flips"
        );
        assert!(!t.ready());
    }

    #[test]
    fn tracker_starting_ready_stays_ready_on_success() {
        let t0 = Instant::now();
        let mut t = Tracker::new(spec(1, 3), t0, true);
        assert!(!t.record(true, t0));
        assert!(t.ready());
        let mut t = Tracker::new(spec(1, 1), t0, false);
        assert!(!t.record(false, t0));
        assert!(t.record(true, t0));
    }
}
