#!/usr/bin/env bash
# The main job: bitcoin-controller against a local control plane, with a
# 3-node demo network that gets meshed and mines 101 blocks.
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
BLOCKS=101
MINING_ADDRESS=bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080 # BIP 173 regtest vector
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

# JSON-RPC call to a node with the network's credentials (kept off the
# command line and out of the output).
rpc() {
	local ip=$1 method=$2 params=${3:-[]}
	printf 'user = "%s:%s"\n' "$RPC_USER" "$RPC_PASSWORD" |
		curl -sS --fail-with-body -K - -H 'content-type: text/plain' \
			--data-binary "{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"$method\",\"params\":$params}" \
			"http://$ip:18443/" | jq -r '.result'
}

wait_until() {
	local what=$1 check=$2 start=$SECONDS last=""
	while ((SECONDS - start < TIMEOUT)); do
		if out=$($check 2>/dev/null); then
			printf '\r\033[K'
			say "$what: done in $((SECONDS - start))s"
			return 0
		fi
		if [[ "$out" != "$last" ]]; then printf '\r\033[K  %s' "$out"; last=$out; fi
		sleep 1
	done
	echo
	die "$what: not reached within ${TIMEOUT}s (controller log: $LOG_FILE)"
}

# Prints progress; succeeds when every node is ready and connected to all others.
mesh_ready() {
	local status
	status=$(kubectl get bitcoinnetwork "$NETWORK" -o json | jq -c '.status // {}')
	jq -e --argjson n "$NODES" '(.readyNodes == $n) and ([.nodes[]? | select(.ready and .connectedPeers == ($n - 1))] | length == $n)' <<<"$status" >/dev/null &&
		return 0
	jq -r '"ready \(.readyNodes // 0)/'"$NODES"'; peers per node: \([.nodes[]? | .connectedPeers // 0] | map(tostring) | join(" "))"' <<<"$status"
	return 1
}

all_at_height() {
	local ip heights=() ok=0
	for ip in "${IPS[@]}"; do
		h=$(rpc "$ip" getblockcount) || h="?"
		heights+=("$h")
		[[ "$h" == "$TARGET" ]] || ok=1
	done
	echo "heights: ${heights[*]}"
	return $ok
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

demo_network() {
	wait_until "every node ready and connected to the other $((NODES - 1))" mesh_ready

	RPC_USER=$(kubectl get secret "$NETWORK" -o jsonpath='{.data.BC_RPC_USER}' | base64 -d)
	RPC_PASSWORD=$(kubectl get secret "$NETWORK" -o jsonpath='{.data.BC_RPC_PASSWORD}' | base64 -d)
	mapfile -t IPS < <(kubectl get bitcoinnetwork "$NETWORK" -o json | jq -r '.status.nodes | sort_by(.ordinal) | .[].ip')

	# A network left by an earlier run already has blocks: mine on top.
	TARGET=$(($(rpc "${IPS[0]}" getblockcount) + BLOCKS))
	say "mining $BLOCKS blocks on node 0 (${IPS[0]})"
	rpc "${IPS[0]}" generatetoaddress "[$BLOCKS, \"$MINING_ADDRESS\"]" >/dev/null
	wait_until "every node at height $TARGET" all_at_height

	for i in "${!IPS[@]}"; do
		say "node $i (${IPS[$i]}): height $(rpc "${IPS[$i]}" getblockcount), best block $(rpc "${IPS[$i]}" getbestblockhash)"
	done
	kubectl get bitcoinnetworks
	say "BLOCKS is the height node 0 had at the last reconcile; resyncs refresh it every 30 s"
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
