//! What can keep a network from its desired state, as one typed vocabulary:
//! the reason of the `Degraded` condition, of its Warning Event, of the
//! `reason` label of the error metric, and the retry policy that goes with
//! it.

use std::fmt;

/// Why a network is not in its desired state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// `spec.secret` names a Secret that does not exist.
    SecretNotFound,
    /// The credentials Secret lacks a key or holds an unusable user.
    SecretInvalid,
    /// The namespace did not grant the controller access to its Secrets.
    SecretAccessDenied,
    /// An object the network needs exists and belongs to someone else.
    ResourceConflict,
    /// The API server refused an owned object (validation, quota, webhook).
    ApplyRejected,
    /// The StatefulSet exists but its pods cannot be created.
    PodCreationFailed,
    /// Pods exist but cannot start: no node fits them, their image cannot
    /// be pulled, their container cannot be created or keeps crashing.
    PodNotStarting,
    /// The spec cannot work (the API server's schema refuses it for new
    /// objects; this covers objects stored before the rule existed).
    InvalidSpec,
    /// Ready nodes did not answer RPC.
    NodeSyncFailed,
    /// `spec.mining` has no address and the user's Secret (`spec.secret`)
    /// has no mining key.
    MiningKeyMissing,
    /// `generatetoaddress` failed on the mining node.
    MiningFailed,
}

/// What the worker does after a reconcile reported a problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Retry with the rate limiter's backoff: nothing the controller watches
    /// tells it when the cause is gone.
    Backoff,
    /// Wait: the fix arrives as a watch event (a Secret appears, the spec
    /// changes, a Secret cache syncs), which queues the network again.
    OnChange,
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::SecretNotFound => "SecretNotFound",
            Reason::SecretInvalid => "SecretInvalid",
            Reason::SecretAccessDenied => "SecretAccessDenied",
            Reason::ResourceConflict => "ResourceConflict",
            Reason::ApplyRejected => "ApplyRejected",
            Reason::PodCreationFailed => "PodCreationFailed",
            Reason::PodNotStarting => "PodNotStarting",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::NodeSyncFailed => "NodeSyncFailed",
            Reason::MiningKeyMissing => "MiningKeyMissing",
            Reason::MiningFailed => "MiningFailed",
        }
    }

    pub const fn retry(self) -> Retry {
        match self {
            Reason::SecretNotFound
            | Reason::SecretInvalid
            | Reason::SecretAccessDenied
            | Reason::InvalidSpec
            | Reason::MiningKeyMissing => Retry::OnChange,
            // Every change of a pod (scheduled, pulled, restarted) is a
            // watch event that queues its network.
            Reason::PodNotStarting => Retry::OnChange,
            // Foreign objects are outside the label-scoped caches, so their
            // removal brings no event; rejections and failing pods and nodes
            // may clear by themselves.
            Reason::ResourceConflict
            | Reason::ApplyRejected
            | Reason::PodCreationFailed
            | Reason::NodeSyncFailed
            | Reason::MiningFailed => Retry::Backoff,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that keeps a network from its desired state and needs the
/// user's attention; shown in `Degraded` and as one Warning Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: Reason,
    pub message: String,
}

impl Problem {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

/// A failed reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed for a reason that is not the network's (the API
    /// server is unreachable, a write conflict): retried with backoff.
    #[error("{call}: {}", describe(.source))]
    Kube {
        /// The call, e.g. `applying StatefulSet net-sts`.
        call: String,
        #[source]
        source: kube_client::Error,
    },
    /// A cache the reconcile needs is still filling: retried with backoff.
    #[error("{0}")]
    CacheNotSynced(String),
    /// The status was computed from a cached network older than the API
    /// server's (usually just before the watch delivers the controller's own
    /// previous write): expected, retried at once with backoff, logged at
    /// debug.
    #[error("{0}")]
    Stale(String),
    /// Reported in the status and as an Event; retried as its reason says.
    #[error("{0}")]
    Problem(Problem),
}

/// The metric label of a reconcile that panicked.
pub const PANIC_LABEL: &str = "Panic";

impl Error {
    /// Every `reason` label of the error metric: present (at 0) from the
    /// start, so rates and alerts work before the first error.
    pub const METRIC_LABELS: [&'static str; 15] = [
        Reason::SecretNotFound.as_str(),
        Reason::SecretInvalid.as_str(),
        Reason::SecretAccessDenied.as_str(),
        Reason::ResourceConflict.as_str(),
        Reason::ApplyRejected.as_str(),
        Reason::PodCreationFailed.as_str(),
        Reason::PodNotStarting.as_str(),
        Reason::InvalidSpec.as_str(),
        Reason::NodeSyncFailed.as_str(),
        Reason::MiningKeyMissing.as_str(),
        Reason::MiningFailed.as_str(),
        "KubeApi",
        "CacheNotSynced",
        "Stale",
        PANIC_LABEL,
    ];

    pub fn kube(call: impl Into<String>, source: kube_client::Error) -> Self {
        Error::Kube {
            call: call.into(),
            source,
        }
    }

    /// The `reason` label of the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "KubeApi",
            Error::CacheNotSynced(_) => "CacheNotSynced",
            Error::Stale(_) => "Stale",
            Error::Problem(p) => p.reason.as_str(),
        }
    }
}

/// The API server's status code and message, or the transport error: one
/// short line, never a debug dump of the whole Status.
pub fn describe(err: &kube_client::Error) -> String {
    match err {
        kube_client::Error::Api(status) if !status.message.is_empty() => {
            format!("{} ({})", status.message, status.code)
        }
        kube_client::Error::Api(status) => format!("{} ({})", status.reason, status.code),
        other => other.to_string(),
    }
}

/// The HTTP status of an API error, if the API server answered.
pub fn status_code(err: &kube_client::Error) -> Option<u16> {
    match err {
        kube_client::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Whether the API server refused an object for what it is (invalid,
/// forbidden by a quota or policy, refused by an admission webhook), as
/// opposed to a transient failure: such a refusal is the network's problem
/// and goes to its status.
pub fn is_rejection(err: &kube_client::Error) -> bool {
    matches!(status_code(err), Some(400 | 403 | 422))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_client::core::Status;

    fn api_error(code: u16, message: &str) -> kube_client::Error {
        let mut status = Status::failure(message, "Invalid");
        status.code = code;
        kube_client::Error::Api(Box::new(status))
    }

    #[test]
    fn errors_name_the_call_and_the_api_servers_words() {
        let err = Error::kube(
            "applying Service n-svc",
            api_error(422, "Service \"n-svc\" is invalid: metadata.name: too long"),
        );
        assert_eq!(
            err.to_string(),
            "applying Service n-svc: Service \"n-svc\" is invalid: metadata.name: too long (422)"
        );
        assert_eq!(err.metric_label(), "KubeApi");
    }

    #[test]
    fn rejections_are_the_networks_problem_transient_failures_are_not() {
        assert!(is_rejection(&api_error(422, "invalid")));
        assert!(is_rejection(&api_error(403, "exceeded quota")));
        assert!(is_rejection(&api_error(400, "webhook denied")));
        assert!(!is_rejection(&api_error(409, "conflict")));
        assert!(!is_rejection(&api_error(500, "etcd")));
        assert!(!is_rejection(&api_error(503, "unavailable")));
    }

    #[test]
    fn every_reason_has_a_name_and_a_retry_policy() {
        use Reason::*;
        for (reason, name, retry) in [
            (SecretNotFound, "SecretNotFound", Retry::OnChange),
            (SecretInvalid, "SecretInvalid", Retry::OnChange),
            (SecretAccessDenied, "SecretAccessDenied", Retry::OnChange),
            (InvalidSpec, "InvalidSpec", Retry::OnChange),
            (ResourceConflict, "ResourceConflict", Retry::Backoff),
            (ApplyRejected, "ApplyRejected", Retry::Backoff),
            (PodCreationFailed, "PodCreationFailed", Retry::Backoff),
            (PodNotStarting, "PodNotStarting", Retry::OnChange),
            (NodeSyncFailed, "NodeSyncFailed", Retry::Backoff),
            (MiningKeyMissing, "MiningKeyMissing", Retry::OnChange),
            (MiningFailed, "MiningFailed", Retry::Backoff),
        ] {
            assert_eq!(reason.as_str(), name);
            assert_eq!(reason.retry(), retry, "{name}");
            assert_eq!(
                Error::Problem(Problem::new(reason, "x")).metric_label(),
                name
            );
            assert!(Error::METRIC_LABELS.contains(&name), "{name}");
        }
    }
}
