#!/usr/bin/env bash
# Every check and test of the project, as CI runs them:
#   fmt, clippy, CRD drift, unit tests, the btcd interop test, then the
#   end-to-end tests against local control planes this script starts and
#   stops itself (its own state dirs and ports, so a running demo is
#   untouched): first the podsim lane (every scenario but the real_node_
#   ones), then the kubelet lane (a real node; needs root and the Debian
#   packages docs/local-cluster.md lists; every scenario but ops.rs's).
# A component that cannot be built or started fails the run loudly.
# Each lane runs in a subshell of its own: its settings must not leak.
# shellcheck disable=SC2030,SC2031
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "shellcheck"
if ! command -v shellcheck >/dev/null; then
	echo "installing shellcheck (Debian package)"
	{ apt-get update -qq && apt-get install -y -qq shellcheck; } >/dev/null ||
		{ echo "could not install shellcheck: apt-get install shellcheck" >&2; exit 1; }
fi
shellcheck -x scripts/*.sh scripts/lib/*.sh hack/btcd/build.sh .ci/run

step "manifests/crd.yaml matches 'bitcoin-controller crd'"
cargo run -q --bin bitcoin-controller -- crd | diff -u manifests/crd.yaml - ||
	{ echo "manifests/crd.yaml is stale: run 'cargo run -- crd > manifests/crd.yaml'" >&2; exit 1; }

step "unit tests"
cargo test --workspace

step "btcd interop (our regtest node against a real Go full node)"
BTCD_BIN="$(hack/btcd/build.sh)"
export BTCD_BIN
cargo test -p regtest-node --features interop --test btcd_interop -- --nocapture

step "local control plane (podsim lane)"
(
	export BC_NODE=podsim
	export BC_CLUSTER_DIR="${BC_TEST_CLUSTER_DIR:-$PWD/.local/test-cluster}"
	export BC_APISERVER_PORT="${BC_APISERVER_PORT:-26443}"
	export BC_ETCD_CLIENT_PORT="${BC_ETCD_CLIENT_PORT:-27790}"
	export BC_ETCD_PEER_PORT="${BC_ETCD_PEER_PORT:-27800}"
	export BC_KCM_PORT="${BC_KCM_PORT:-27257}"
	export BC_PODSIM_IP_PREFIX="${BC_PODSIM_IP_PREFIX:-127.2}"
	# Before `up`: a failed start leaves what did start running.
	trap 'scripts/local-cluster.sh down' EXIT
	scripts/local-cluster.sh up
	eval "$(scripts/local-cluster.sh env)"

	step "end-to-end tests (podsim lane)"
	cargo test --features e2e --test e2e -- --test-threads=1 --nocapture --skip real_node_
)

# The real node: containerd, kubelet, kube-scheduler, kube-proxy, CNI and
# CoreDNS, the controller in-cluster from its image (docs/local-cluster.md).
# Its own state dir, ports, pod subnet and node name.
step "local control plane (kubelet lane: a real node)"
(
	export BC_NODE=kubelet
	export BC_CLUSTER_DIR="${BC_TEST_NODE_CLUSTER_DIR:-$PWD/.local/test-node-cluster}"
	export BC_APISERVER_PORT="${BC_NODE_APISERVER_PORT:-26543}"
	# Ports below the ephemeral range (32768-60999 here), so no outgoing
	# connection can hold one when a component binds it.
	export BC_ETCD_CLIENT_PORT="${BC_NODE_ETCD_CLIENT_PORT:-26579}"
	export BC_ETCD_PEER_PORT="${BC_NODE_ETCD_PEER_PORT:-26580}"
	export BC_KCM_PORT="${BC_NODE_KCM_PORT:-26557}"
	export BC_NODE_PORT_BASE="${BC_TEST_NODE_PORT_BASE:-31250}"
	export BC_POD_NET="${BC_TEST_POD_NET:-10.244.2}"
	export BC_NODE_NAME="${BC_TEST_NODE_NAME:-bc-test-node}"
	# Before `up`: a failed start leaves what did start running.
	trap 'scripts/local-cluster.sh down' EXIT
	scripts/local-cluster.sh up
	eval "$(scripts/local-cluster.sh env)"

	# Every scenario of main.rs and secrets.rs (lane-aware: the controller
	# in-cluster, the node test image) plus node.rs's real_node_ ones. Not
	# ops.rs: it starts, stops, signals (SIGTERM, SIGSTOP) and scrapes
	# controller processes of its own on local ports, which has no meaning
	# with the controller in-cluster; it stays on the podsim lane.
	step "end-to-end tests (kubelet lane)"
	cargo test --features e2e --test e2e -- --test-threads=1 --nocapture --skip ops::

	step "the Helm chart on the real node (scripts/chart-on-node.sh)"
	scripts/chart-on-node.sh
)

# ---------------------------------------------------------------- install paths
# Helm chart and kustomize (charts/bitcoin-controller, manifests/): helm lint,
# helm template vs manifests/, helm install/uninstall and a server-side dry run
# of `kubectl apply -k` on a control plane of its own (other ports and state).
step "install paths (scripts/install-test.sh)"
scripts/install-test.sh
