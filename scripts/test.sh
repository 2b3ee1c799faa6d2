#!/usr/bin/env bash
# Every check and test of the project, as CI runs them:
#   fmt, clippy, CRD drift, unit tests, the btcd interop test, then the
#   end-to-end tests against a local control plane this script starts and
#   stops itself (its own state dir and ports, so a running demo is untouched).
# A component that cannot be built or started fails the run loudly.
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

step "local control plane"
export BC_CLUSTER_DIR="${BC_TEST_CLUSTER_DIR:-$PWD/.local/test-cluster}"
export BC_APISERVER_PORT="${BC_APISERVER_PORT:-26443}"
export BC_ETCD_CLIENT_PORT="${BC_ETCD_CLIENT_PORT:-27790}"
export BC_ETCD_PEER_PORT="${BC_ETCD_PEER_PORT:-27800}"
export BC_KCM_PORT="${BC_KCM_PORT:-27257}"
export BC_PODSIM_IP_PREFIX="${BC_PODSIM_IP_PREFIX:-127.2}"
scripts/local-cluster.sh up
trap 'scripts/local-cluster.sh down' EXIT
eval "$(scripts/local-cluster.sh env)"

step "end-to-end tests"
cargo test --features e2e --test e2e -- --test-threads=1 --nocapture
