#!/usr/bin/env bash
# The main job: bitcoin-controller against a local control plane, with the
# 3-node example network, which the controller meshes and mines to height 101.
#
# usage: scripts/demo.sh [up]   build what is missing, start everything, run the demo
#        scripts/demo.sh down   stop the controller and the local control plane
#
# BC_NODE picks the lane (docs/local-cluster.md): podsim (default: the pod
# simulator plays kubelet, the controller runs here as a process) or kubelet
# (a real node: containerd, kubelet, CNI, kube-proxy, CoreDNS; the controller
# runs in-cluster from manifests/controller.yaml and the network on the node
# test image).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LANE="${BC_NODE:-podsim}"
case "$LANE" in
podsim) export BC_CLUSTER_DIR="${BC_CLUSTER_DIR:-$PWD/.local/cluster}" ;;
kubelet) export BC_CLUSTER_DIR="${BC_CLUSTER_DIR:-$PWD/.local/node-cluster}" ;;
*)
	echo "BC_NODE must be podsim or kubelet" >&2
	exit 2
	;;
esac
export BC_NODE="$LANE"
NODE_IMAGE=bitcoin-regtest-node:dev
NETWORK=my-network
NODES=3
TIMEOUT=${BC_DEMO_TIMEOUT:-300}
PID_FILE="$BC_CLUSTER_DIR/pids/bitcoin-controller.pid"
LOG_FILE="$BC_CLUSTER_DIR/logs/bitcoin-controller.log"
METRICS=${BC_DEMO_METRICS:-127.0.0.1:18080}
HEALTH=${BC_DEMO_HEALTH:-127.0.0.1:18081}

say() { printf '\033[1mdemo:\033[0m %s\n' "$*"; }
die() {
	say "error: $*" >&2
	exit 1
}

controller_pid() {
	local pid
	pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
	kill -0 "$pid" 2>/dev/null && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == bitcoin-contro* ]] && echo "$pid"
}

down() {
	local pid
	if [[ -f "$BC_CLUSTER_DIR/cluster.env" ]] && grep -q '^NODE_LANE=kubelet' "$BC_CLUSTER_DIR/cluster.env"; then
		export BC_NODE=kubelet
	elif [[ -f "$BC_CLUSTER_DIR/cluster.env" ]]; then
		export BC_NODE=podsim
	fi
	if pid=$(controller_pid); then
		say "stopping the controller (pid $pid)"
		kill -TERM "$pid"
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
	fi
	rm -f "$PID_FILE"
	scripts/local-cluster.sh down
}

up() {
	say "lane: $LANE ($([[ $LANE == kubelet ]] && echo "a real node: containerd, kubelet, CNI bridge, kube-proxy, CoreDNS; the controller in-cluster" || echo "pod simulator; the controller as a local process")), state $BC_CLUSTER_DIR"
	say "starting the local control plane (the first run builds Kubernetes from Go modules)"
	scripts/local-cluster.sh up
	eval "$(scripts/local-cluster.sh env)"

	if [[ "$LANE" == kubelet ]]; then
		LOG_FILE="kubectl -n bitcoin-controller logs deploy/bitcoin-controller"
		say "controller in-cluster: $(kubectl -n bitcoin-controller get pods -o wide --no-headers | awk '{printf "%s %s %s; ", $1, $2, $3}')"
		say "creating the $NODES-node network $NETWORK (spec.image $NODE_IMAGE)"
		sed "s|^  nodes: $NODES\$|  nodes: $NODES\n  image: $NODE_IMAGE|" manifests/examples/test-network.yaml | kubectl apply -f -
	else
		start_local_controller
		say "creating the $NODES-node network $NETWORK"
		kubectl apply -f manifests/examples/test-network.yaml
	fi
	demo_network
	if [[ "$LANE" == kubelet ]]; then
		kubectl get nodes -o wide
		kubectl get pods -o wide
		cat <<EOT

Look around (real node):
  eval "\$(BC_CLUSTER_DIR=$BC_CLUSTER_DIR scripts/local-cluster.sh env)"
  kubectl get bitcoinnetworks,statefulsets,services,pods -o wide
  kubectl logs ${NETWORK}-sts-0
  kubectl exec ${NETWORK}-sts-0 -- bitcoin-cli -conf=/etc/bitcoin/bitcoin.conf -datadir=/data getblockchaininfo
  kubectl exec ${NETWORK}-sts-0 -- getent hosts ${NETWORK}-sts-1.${NETWORK}-svc.default.svc.cluster.local
  kubectl -n bitcoin-controller logs deploy/bitcoin-controller

Stop everything:
  BC_NODE=kubelet scripts/demo.sh down
EOT
	else
		show_podsim_hints
	fi
}

start_local_controller() {
	say "building the controller"
	cargo build -q --bin bitcoin-controller
	if pid=$(controller_pid); then
		say "controller already running (pid $pid)"
	else
		mkdir -p "$(dirname "$PID_FILE")" "$(dirname "$LOG_FILE")"
		RUST_LOG=${RUST_LOG:-info} nohup "${CARGO_TARGET_DIR:-target}/debug/bitcoin-controller" \
			--kubeconfig "$BC_CONTROLLER_KUBECONFIG" \
			--metrics-bind-address "$METRICS" --health-probe-bind-address "$HEALTH" >"$LOG_FILE" 2>&1 &
		echo $! >"$PID_FILE"
		say "controller started under its ServiceAccount (pid $!, log $LOG_FILE)"
	fi
}

# The network's Ready condition means usable: every node ready, connected
# to all others and at the same best block, at least spec.mining.initialBlocks
# high. The demo waits for it as a CI job would, then shows the status.
demo_network() {
	local start=$SECONDS
	say "waiting for Ready (kubectl wait --for=condition=Ready bitcoinnetwork/$NETWORK)"
	kubectl wait --for=condition=Ready "bitcoinnetwork/$NETWORK" --timeout="${TIMEOUT}s" ||
		die "not Ready within ${TIMEOUT}s: kubectl describe bitcoinnetwork $NETWORK (controller log: $LOG_FILE)"
	say "Ready $((SECONDS - start))s after creation: every node ready, connected to the other $((NODES - 1)), at the same block"
	kubectl get bitcoinnetwork "$NETWORK" -o json | jq -r '
		.status.nodes | sort_by(.ordinal) | .[] |
		"node \(.ordinal) \(.podName) (\(.ip)): ready \(.ready), \(.connectedPeers) peers, height \(.blocks), best block \(.bestBlockHash)"' |
		while read -r line; do say "$line"; done
	kubectl get bitcoinnetworks
}

show_podsim_hints() {
	cat <<EOT

Look around:
  eval "\$(scripts/local-cluster.sh env)"
  kubectl get bitcoinnetworks,statefulsets,services,pods
  kubectl get bitcoinnetwork $NETWORK -o yaml      # the status
  kubectl describe bitcoinnetwork $NETWORK         # events
  kubectl scale statefulset ${NETWORK}-sts --replicas=5   # drift: put back to $NODES
  kubectl patch bitcoinnetwork $NETWORK --type merge -p '{"spec":{"nodes":4}}'
  tail -f $LOG_FILE
  curl -s http://$METRICS/metrics | grep ^workqueue_     # metrics
  curl -s http://$HEALTH/readyz                          # readiness

Stop everything:
  scripts/demo.sh down
EOT
}

case "${1:-up}" in
up) up ;;
down) down ;;
*) die "usage: $0 [up|down]" ;;
esac
