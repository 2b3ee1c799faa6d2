#!/usr/bin/env bash
# Benchmark: how fast the controller brings many networks to Ready at once,
# and what it costs in memory and CPU. Prints numbers; asserts nothing.
#
# usage: scripts/bench.sh [NETWORKS] [NODES]   (default 20 networks of 5 nodes)
#
# Runs against the local control plane of scripts/demo.sh (started if it is
# not running), with a release build of the controller under its own
# ServiceAccount, in a namespace of its own that it deletes at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

NETWORKS=${1:-20}
NODES=${2:-5}
IDLE_SECS=${BC_BENCH_IDLE_SECS:-35}
NS=bench
export BC_CLUSTER_DIR="${BC_CLUSTER_DIR:-$PWD/.local/cluster}"
LOG="$BC_CLUSTER_DIR/logs/bench-controller.log"

say() { printf 'bench: %s\n' "$*"; }

scripts/local-cluster.sh up >/dev/null 2>&1 || scripts/local-cluster.sh up
eval "$(scripts/local-cluster.sh env)"
cargo build -q --release --bin bitcoin-controller
kubectl delete namespace "$NS" --ignore-not-found --wait=true >/dev/null

RUST_LOG=warn "${CARGO_TARGET_DIR:-target}/release/bitcoin-controller" \
	--kubeconfig "$BC_CONTROLLER_KUBECONFIG" \
	--metrics-bind-address 0 --health-probe-bind-address 0 >"$LOG" 2>&1 &
PID=$!
cleanup() {
	kill -TERM "$PID" 2>/dev/null || true
	wait "$PID" 2>/dev/null || true
	kubectl delete namespace "$NS" --ignore-not-found --wait=false >/dev/null || true
}
trap cleanup EXIT

# Resident memory (KiB) and CPU time (seconds) of the controller.
rss() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$PID/status"; }
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$PID/stat"; }
# a - b, two decimals
minus() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a - b}'; }
# How many objects of a kind in the namespace have the condition Ready=True.
count_ready() {
	kubectl get "$1" -n "$NS" -o json |
		jq '[.items[] | select(any(.status.conditions[]?; .type == "Ready" and .status == "True"))] | length'
}

sleep 2
say "controller idle with no network: RSS $(rss) KiB"

kubectl create namespace "$NS" >/dev/null
kubectl create rolebinding bitcoin-controller-secrets -n "$NS" \
	--clusterrole=bitcoin-controller-secrets \
	--serviceaccount=bitcoin-controller:bitcoin-controller >/dev/null
cpu_before=$(cpu)
start=$(date +%s.%N)
for i in $(seq "$NETWORKS"); do
	printf 'apiVersion: bitcoincontroller.christianb93.github.com/v1\nkind: BitcoinNetwork\nmetadata: {name: net-%s}\nspec: {nodes: %s}\n---\n' "$i" "$NODES"
done | kubectl apply -n "$NS" -f - >/dev/null
say "created $NETWORKS networks of $NODES nodes ($((NETWORKS * NODES)) nodes)"

ready=0
pods_took=""
deadline=$((SECONDS + 300))
while ((SECONDS < deadline)); do
	if [[ -z "$pods_took" ]] && (($(count_ready pods) == NETWORKS * NODES)); then
		pods_took=$(minus "$(date +%s.%N)" "$start")
	fi
	ready=$(count_ready bitcoinnetworks)
	((ready == NETWORKS)) && break
	sleep 0.2
done
took=$(minus "$(date +%s.%N)" "$start")
((ready == NETWORKS)) || { say "only $ready of $NETWORKS networks Ready after 300 s (log: $LOG)"; exit 1; }
say "all $((NETWORKS * NODES)) pods Ready (StatefulSet controller and pod simulator): ${pods_took:-$took} s after creation"
say "all $NETWORKS networks Ready (every node ready and meshed): $took s after creation"
say "controller during convergence: $(minus "$(cpu)" "$cpu_before") s CPU; RSS now $(rss) KiB"

cpu_before=$(cpu)
sleep "$IDLE_SECS"
say "controller idle for ${IDLE_SECS} s with $NETWORKS networks (one resync included): $(minus "$(cpu)" "$cpu_before") s CPU, RSS $(rss) KiB"
