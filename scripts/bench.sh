#!/usr/bin/env bash
# Benchmark: how fast the controller brings many networks to Ready at once,
# what it costs in memory and CPU, and how many API writes it makes at rest.
# Prints numbers; asserts nothing.
#
# usage: scripts/bench.sh [--networks 10,100,300] [--nodes 3]
#                         [--unrelated PODS,SECRETS] [--unrelated-ns NS]
#        scripts/bench.sh NETWORKS [NODES]          (one run; NODES 5 as before)
# Without arguments: one run of 20 networks of 3 nodes.
#
# One run per entry of --networks: a fresh controller process (release build,
# its own ServiceAccount), that many networks created at once in a namespace
# of their own (bench-n<networks>), then BC_BENCH_IDLE_SECS (default 300) at rest, then the namespace
# is deleted. With --unrelated, the runs are made twice: first as they are,
# then again on a background of PODS unrelated pods and SECRETS unrelated
# Secrets in namespace NS (default bench-unrelated), created before the
# controller starts; the pods get a nodeSelector no node has, so they stay
# Pending (podsim does not run them) but are still Pods in the cluster.
#
# Environment: BC_CLUSTER_DIR and the other BC_* variables of
# scripts/local-cluster.sh (the cluster is started if it is not running),
# BC_BENCH_IDLE_SECS (300), BC_BENCH_TIMEOUT (1200 s for all networks to be
# Ready), BC_BENCH_DELETE_TIMEOUT (900 s for the namespace to go).
# Output is also appended to $BC_CLUSTER_DIR/bench/results.txt.
# More than about 600 networks x 3 nodes need BC_PODSIM_NODES=2 when the
# cluster is started (one podsim process runs out of open files).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

NETWORK_LIST=20
NODES=3
UNRELATED=""
UNRELATED_NS=bench-unrelated
if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then
	NETWORK_LIST=$1
	NODES=${2:-5}
	shift $(($# >= 2 ? 2 : 1))
fi
while [[ $# -gt 0 ]]; do
	case "$1" in
	--networks) NETWORK_LIST=${2:?}; shift 2 ;;
	--nodes) NODES=${2:?}; shift 2 ;;
	--unrelated) UNRELATED=${2:?}; shift 2 ;;
	--unrelated-ns) UNRELATED_NS=${2:?}; shift 2 ;;
	-h | --help) usage ;;
	*) printf 'bench: unknown argument %s\n\n' "$1" >&2; usage 2 ;;
	esac
done
[[ "$NETWORK_LIST" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--networks wants a list like 10,100,300"
[[ "$NODES" =~ ^[0-9]+$ ]] || die "--nodes wants a number"
IFS=, read -r -a NETWORK_COUNTS <<<"$NETWORK_LIST"
UNRELATED_PODS=0
UNRELATED_SECRETS=0
if [[ -n "$UNRELATED" ]]; then
	[[ "$UNRELATED" =~ ^([0-9]+),([0-9]+)$ ]] || die "--unrelated wants PODS,SECRETS, e.g. 5000,2000"
	UNRELATED_PODS=${BASH_REMATCH[1]}
	UNRELATED_SECRETS=${BASH_REMATCH[2]}
fi

IDLE_SECS=${BC_BENCH_IDLE_SECS:-300}
TIMEOUT=${BC_BENCH_TIMEOUT:-1200}
DELETE_TIMEOUT=${BC_BENCH_DELETE_TIMEOUT:-900}
# Each run gets its own namespace (bench-<run>): kube-controller-manager
# still posts Events about the last run's StatefulSets for a few seconds after
# their namespace is gone, and would otherwise post them into the next run's.
NS=bench
export BC_CLUSTER_DIR="${BC_CLUSTER_DIR:-$PWD/.local/cluster}"
OUT_DIR="$BC_CLUSTER_DIR/bench"
CONTROLLER="${CARGO_TARGET_DIR:-target}/release/bitcoin-controller"

say() { printf 'bench: %s\n' "$*"; }
progress() { printf 'bench: %s\n' "$*" >&2; }

scripts/local-cluster.sh up >/dev/null 2>&1 || scripts/local-cluster.sh up
eval "$(scripts/local-cluster.sh env)"
cargo build -q --release --bin bitcoin-controller
mkdir -p "$OUT_DIR"
exec > >(tee -a "$OUT_DIR/results.txt")

# ------------------------------------------------------------ measurements

# Fields of /proc/PID/status in KiB, and CPU seconds (user + system) of a pid.
vm() { sed -n "s/^$2:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$1/status" 2>/dev/null || echo 0; }
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# a - b, two decimals
minus() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a - b}'; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
now() { date +%s.%N; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# Busy and total jiffies of the whole machine.
machine_cpu() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
busy_pct() { # before-"busy total" after-"busy total"
	awk -v b="$1" -v a="$2" 'BEGIN {split(b, x, " "); split(a, y, " "); t = y[2] - x[2]; printf "%.0f", (t > 0 ? 100 * (y[1] - x[1]) / t : 0)}'
}

# The control-plane processes and every podsim (BC_PODSIM_NODES).
COMPONENTS=(etcd kube-apiserver kube-controller-manager)
for pid_file in "$BC_CLUSTER_DIR"/pids/podsim*.pid; do
	if [[ -e "$pid_file" ]]; then COMPONENTS+=("$(basename "$pid_file" .pid)"); fi
done
component_pid() {
	local pid _
	read -r pid _ 2>/dev/null <"$BC_CLUSTER_DIR/pids/$1.pid" || return 0
	if [[ -d "/proc/$pid" ]]; then echo "$pid"; fi
}
# "name cpu" per component, to subtract later.
components_cpu() {
	local c
	for c in "${COMPONENTS[@]}"; do echo "$c $(cpu "$(component_pid "$c")")"; done
}
components_report() { # label, output of components_cpu before
	local c before line=""
	for c in "${COMPONENTS[@]}"; do
		local pid
		pid=$(component_pid "$c")
		before=$(awk -v c="$c" '$1 == c {print $2}' <<<"$2")
		line+=" $c $(minus "$(cpu "$pid")" "${before:-0}") s CPU, RSS $(mib "$(vm "$pid" VmRSS)") MiB;"
	done
	say "  $1:${line%;}"
}

# kube-apiserver's counters, reduced by hack/bench/metrics.awk.
scrape() { kubectl get --raw /metrics | awk -f hack/bench/metrics.awk | sort; }

# Who writes what in this cluster, besides the controller.
writer() {
	case "$1" in
	bitcoinnetworks/status) echo "controller" ;;
	bitcoinnetworks) echo "this script (creates the networks)" ;;
	statefulsets) echo "controller" ;;
	statefulsets/status) echo "kube-controller-manager (statefulset controller)" ;;
	services) echo "controller" ;;
	secrets) echo "controller (in $NS); this script (unrelated ones)" ;;
	events | events.events.k8s.io) echo "controller; kube-controller-manager (statefulset controller, delivered late)" ;;
	pods) echo "kube-controller-manager (creates, deletes); podsim (deletes after grace); this script (unrelated ones)" ;;
	pods/status | pods/binding) echo "podsim" ;;
	nodes | nodes/status) echo "podsim (Node heartbeat every 10 s)" ;;
	leases) echo "kube-apiserver (its identity lease); the controller only with --leader-elect (off here)" ;;
	endpointslices | endpoints) echo "kube-controller-manager" ;;
	controllerrevisions) echo "kube-controller-manager (statefulset controller)" ;;
	*) echo "other (not the controller: no RBAC for it)" ;;
	esac
}
# Resources that only the controller writes in this cluster. Events are not
# among them: kube-controller-manager's Event broadcaster (rate-limited)
# still delivers the convergence's SuccessfulCreate Events minutes later,
# inside the window at rest (626 of them after 300 networks); the FlowSchema
# count tells the controller's own Events apart.
ATTRIBUTED="bitcoinnetworks/status statefulsets services secrets"

# Prints the writes between two scrapes; sets WRITES_ATTRIBUTED and
# WRITES_EXACT (the controller's ServiceAccount, from the FlowSchemas).
report_writes() { # title before after
	local delta
	delta=$(awk -f hack/bench/delta.awk "$2" "$3")
	say "  $1, all clients (apiserver_request_total, write verbs):"
	if grep -q '^req ' <<<"$delta"; then
		printf 'bench:     %-8s %-32s %7s  %s\n' VERB RESOURCE COUNT "WRITTEN BY (in this cluster)"
		local _k verb res n
		while read -r _k verb res n; do
			printf 'bench:     %-8s %-32s %7s  %s\n' "$verb" "$res" "$n" "$(writer "$res")"
		done < <(grep '^req ' <<<"$delta" | sort -k3,3 -k2,2)
	else
		say "    (no writes at all)"
	fi
	WRITES_ATTRIBUTED=$(awk -v set="$ATTRIBUTED" 'BEGIN {n = split(set, s, " "); for (i = 1; i <= n; i++) a[s[i]] = 1}
		$1 == "req" && ($3 in a) {t += $4} END {print t + 0}' <<<"$delta")
	WRITES_EXACT=$(awk '$1 == "fs" && $2 ~ /^bench-ctl-w-/ {t += $3} END {print t + 0}' <<<"$delta")
	local by_fs reads
	by_fs=$(awk '$1 == "fs" && $2 ~ /^bench-ctl-w-/ {sub(/^bench-ctl-w-/, "", $2); printf " %s %s,", $2, $3}' <<<"$delta")
	reads=$(awk '$1 == "fs" && $2 == "bench-ctl-r" {print $3}' <<<"$delta")
	say "    attributed to the controller (rows $ATTRIBUTED; events are shared): $WRITES_ATTRIBUTED"
	say "    made by the controller's ServiceAccount (FlowSchemas bench-ctl-w-*): $WRITES_EXACT${by_fs:+ =${by_fs%,}}; its reads: ${reads:-0}"
}

# How many objects of a kind in the namespace have the condition Ready=True.
count_ready() {
	kubectl get "$1" -n "$2" -o json |
		jq '[.items[] | select(any(.status.conditions[]?; .type == "Ready" and .status == "True"))] | length'
}
# "ready latest": pods with Ready=True, and the latest lastTransitionTime of
# their Ready condition (epoch seconds; the API has 1 s resolution).
pods_ready_at() {
	kubectl get pods -n "$1" -o json | jq -r '[.items[] | .status.conditions[]? | select(.type == "Ready" and .status == "True")]
		| "\(length) \((map(.lastTransitionTime | fromdateiso8601) | max) // 0)"'
}

wait_namespace_gone() { # ns timeout
	local deadline=$((SECONDS + $2))
	while kubectl get namespace "$1" >/dev/null 2>&1; do
		((SECONDS < deadline)) || return 1
		sleep 2
	done
}

# ------------------------------------------------------------ controller

PID=""
start_controller() { # log file
	local port
	port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
	RUST_LOG=warn "$CONTROLLER" \
		--kubeconfig "$BC_CONTROLLER_KUBECONFIG" \
		--metrics-bind-address 0 --health-probe-bind-address "127.0.0.1:$port" >"$1" 2>&1 &
	PID=$!
	local deadline=$((SECONDS + 300))
	until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do
		kill -0 "$PID" 2>/dev/null || die "controller exited (log: $1)"
		((SECONDS < deadline)) || die "controller not ready after 300 s (log: $1)"
		sleep 0.2
	done
}
stop_controller() {
	[[ -n "$PID" ]] || return 0
	kill -TERM "$PID" 2>/dev/null || true
	wait "$PID" 2>/dev/null || true
	PID=""
}

BACKGROUND_MADE=0
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
	stop_controller
	kubectl delete namespace "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
	if ((BACKGROUND_MADE)); then
		kubectl delete namespace "$UNRELATED_NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
	fi
}
trap cleanup EXIT

# ------------------------------------------------------------ background

make_background() {
	local t0 tmp
	t0=$(now)
	tmp=$(mktemp -d)
	kubectl delete namespace "$UNRELATED_NS" --ignore-not-found --wait=true >/dev/null
	kubectl create namespace "$UNRELATED_NS" >/dev/null
	BACKGROUND_MADE=1
	# Pods need the namespace's default ServiceAccount (kube-controller-manager
	# creates it).
	until kubectl get serviceaccount default -n "$UNRELATED_NS" >/dev/null 2>&1; do sleep 0.2; done
	# One Pod ~ what a small Deployment's pod carries; a nodeSelector no node
	# has keeps it Pending: podsim binds only pods whose nodeSelector matches.
	awk -v n="$UNRELATED_PODS" -v per=500 -v dir="$tmp" 'BEGIN {
		for (i = 1; i <= n; i++) {
			f = sprintf("%s/pods-%03d.yaml", dir, int((i - 1) / per))
			printf "apiVersion: v1\nkind: Pod\nmetadata:\n  name: unrelated-%d\n  labels: {app: unrelated, shard: \"s%d\"}\n", i, i % 50 > f
			printf "  annotations: {example.com/owner: team-%d}\n", i % 20 > f
			printf "spec:\n  nodeSelector: {bench.bitcoin-controller/no-such-node: \"true\"}\n" > f
			printf "  containers:\n    - name: app\n      image: registry.example/unrelated/app:1.%d\n", i % 10 > f
			printf "      args: [--port=8080, --log-level=info]\n      ports: [{containerPort: 8080, name: http}]\n" > f
			printf "      env: [{name: MODE, value: background}]\n" > f
			printf "      resources: {requests: {cpu: 10m, memory: 16Mi}}\n---\n" > f
		}
	}'
	# 1 KiB of data per Secret.
	local payload
	payload=$(head -c 768 /dev/urandom | base64 -w0)
	awk -v n="$UNRELATED_SECRETS" -v per=500 -v dir="$tmp" -v p="$payload" 'BEGIN {
		for (i = 1; i <= n; i++) {
			f = sprintf("%s/secrets-%03d.yaml", dir, int((i - 1) / per))
			printf "apiVersion: v1\nkind: Secret\nmetadata:\n  name: unrelated-%d\n  labels: {app: unrelated}\n", i > f
			printf "type: Opaque\ndata:\n  payload: %s\n---\n", p > f
		}
	}'
	# kubectl create (one POST per object, no GET as apply does), two files
	# of 500 objects at a time.
	local f failed=0
	for f in "$tmp"/*.yaml; do
		[[ -e "$f" ]] || continue
		kubectl create -n "$UNRELATED_NS" -f "$f" >/dev/null &
		(($(jobs -rp | wc -l) < 2)) || wait -n || failed=1
	done
	while (($(jobs -rp | wc -l) > 0)); do wait -n || failed=1; done
	rm -rf "$tmp"
	((failed == 0)) || die "creating the unrelated objects failed"
	local pods secrets bound
	pods=$(kubectl get pods -n "$UNRELATED_NS" -o name | wc -l)
	secrets=$(kubectl get secrets -n "$UNRELATED_NS" -o name | wc -l)
	bound=$(kubectl get pods -n "$UNRELATED_NS" -o json | jq '[.items[] | select(.spec.nodeName)] | length')
	say "background: $pods pods ($bound bound to a node) and $secrets Secrets in namespace $UNRELATED_NS, made in $(minus "$(now)" "$t0") s"
}

# ------------------------------------------------------------ one run

ROWS=()
declare -A RSS_REST_BY_RUN RSS_IDLE_BY_RUN

run_one() { # networks background-label
	local networks=$1 bg=$2 pods=$(($1 * NODES))
	local label="n${networks}${bg:+-bg}" log="$BC_CLUSTER_DIR/logs/bench-controller-n${networks}${bg:+-bg}.log"
	NS="bench-$label"
	local load_start load_end
	load_start=$(loadavg)
	say "=== run $label: $networks networks x $NODES nodes ($pods pods), background: ${bg:-none}; load average at start: $load_start; $(date -u +%H:%M:%S) UTC"
	kubectl delete namespace "$NS" --ignore-not-found --wait=false >/dev/null
	wait_namespace_gone "$NS" "$DELETE_TIMEOUT" || die "namespace $NS still there after $DELETE_TIMEOUT s"

	start_controller "$log"
	local rss_idle hwm_idle
	rss_idle=$(vm "$PID" VmRSS)
	hwm_idle=$(vm "$PID" VmHWM)
	say "  controller synced (/readyz), no network yet: VmRSS $rss_idle KiB, VmHWM $hwm_idle KiB, $(cpu "$PID") s CPU"

	kubectl create namespace "$NS" >/dev/null
	kubectl create rolebinding bitcoin-controller-secrets -n "$NS" \
		--clusterrole=bitcoin-controller-secrets \
		--serviceaccount=bitcoin-controller:bitcoin-controller >/dev/null
	local cpu0 comp0 mach0 m0 start
	m0=$(mktemp)
	scrape >"$m0"
	cpu0=$(cpu "$PID")
	comp0=$(components_cpu)
	mach0=$(machine_cpu)
	start=$(now)
	for i in $(seq "$networks"); do
		printf 'apiVersion: bitcoincontroller.christianb93.github.com/v1\nkind: BitcoinNetwork\nmetadata: {name: net-%s}\nspec: {nodes: %s}\n---\n' "$i" "$NODES"
	done | kubectl create -n "$NS" -f - >/dev/null
	say "  created $networks networks in $(minus "$(now)" "$start") s"

	# Poll the networks (small objects); the pods' time comes afterwards from
	# their Ready lastTransitionTime, so 3,000 pods are not listed every second.
	local interval=0.5 ready=0 nets_took="" deadline=$((SECONDS + TIMEOUT)) next_note=$((SECONDS + 30))
	((networks <= 100)) || interval=2
	while ((SECONDS < deadline)); do
		ready=$(count_ready bitcoinnetworks "$NS")
		if ((ready == networks)); then
			nets_took=$(minus "$(now)" "$start")
			break
		fi
		if ((SECONDS >= next_note)); then
			progress "  $(date -u +%H:%M:%S) $ready of $networks networks Ready; load $(loadavg)"
			next_note=$((SECONDS + 30))
		fi
		sleep "$interval"
	done
	local cpu_conv m1 mach1
	cpu_conv=$(minus "$(cpu "$PID")" "$cpu0")
	mach1=$(machine_cpu)
	m1=$(mktemp)
	scrape >"$m1"
	local pr pods_ready pods_last pods_took
	pr=$(pods_ready_at "$NS")
	read -r pods_ready pods_last <<<"$pr"
	if ((pods_ready == pods)); then
		pods_took=$(minus "$pods_last" "$start")
	else
		pods_took="-"
	fi
	if [[ -z "$nets_took" ]]; then
		say "  TIMEOUT: only $ready of $networks networks and $pods_ready of $pods pods Ready after $TIMEOUT s (log: $log)"
		nets_took="> $TIMEOUT"
	else
		say "  all $pods pods Ready: $pods_took s after creation (latest Ready lastTransitionTime, 1 s resolution)"
		say "  all $networks networks Ready (every node ready and meshed): $nets_took s after creation (polled every $interval s)"
	fi
	local rss_conv hwm_conv
	rss_conv=$(vm "$PID" VmRSS)
	hwm_conv=$(vm "$PID" VmHWM)
	say "  controller during convergence: $cpu_conv s CPU; VmRSS $rss_conv KiB, VmHWM $hwm_conv KiB; machine CPU busy $(busy_pct "$mach0" "$mach1")% (2 cores, shared)"
	components_report "control plane during convergence" "$comp0"
	report_writes "API writes during convergence" "$m0" "$m1"
	local writes_conv=$WRITES_EXACT

	# At rest.
	local cpu1 comp1 m2 m3 mach2
	cpu1=$(cpu "$PID")
	comp1=$(components_cpu)
	mach2=$(machine_cpu)
	m2=$(mktemp)
	m3=$(mktemp)
	scrape >"$m2"
	sleep "$IDLE_SECS"
	scrape >"$m3"
	local cpu_rest rss_rest hwm_rest
	cpu_rest=$(minus "$(cpu "$PID")" "$cpu1")
	rss_rest=$(vm "$PID" VmRSS)
	hwm_rest=$(vm "$PID" VmHWM)
	load_end=$(loadavg)
	say "  controller at rest for $IDLE_SECS s: $cpu_rest s CPU; VmRSS $rss_rest KiB, VmHWM $hwm_rest KiB; machine CPU busy $(busy_pct "$mach2" "$(machine_cpu)")%"
	components_report "control plane at rest" "$comp1"
	report_writes "API writes in $IDLE_SECS s at rest" "$m2" "$m3"
	say "  kube-controller-manager and podsim write too (pod status and binding, nodes/status heartbeats, statefulsets/status, endpointslices), and kube-apiserver its leases: only the rows $ATTRIBUTED are attributed to the controller (events are shared with kube-controller-manager); the FlowSchema count is the controller's ServiceAccount alone, Events included"
	rm -f "$m0" "$m1" "$m2" "$m3"
	stop_controller

	ROWS+=("$(printf '| %s | %s x %s | %s | %s / %s | %s | %s | %s | %s | %s / %s / %s | %s | %s (%s) | %s |' \
		"$label" "$networks" "$NODES" "${bg:-none}" "${load_start%% *}" "${load_end%% *}" \
		"$pods_took" "$nets_took" "$cpu_conv" "$cpu_rest" \
		"$(mib "$rss_idle")" "$(mib "$rss_conv")" "$(mib "$rss_rest")" "$(mib "$hwm_rest")" \
		"$WRITES_EXACT" "$WRITES_ATTRIBUTED" "$writes_conv")")
	RSS_REST_BY_RUN[$label]=$rss_rest
	RSS_IDLE_BY_RUN[$label]=$rss_idle

	local t0
	t0=$(now)
	kubectl delete namespace "$NS" --wait=false >/dev/null
	if wait_namespace_gone "$NS" "$DELETE_TIMEOUT"; then
		say "  namespace $NS deleted in $(minus "$(now)" "$t0") s"
	else
		say "  namespace $NS still there after $DELETE_TIMEOUT s"
	fi
	[[ "$nets_took" != ">"* ]] || TIMED_OUT=1
}

say "$(date -u '+%Y-%m-%d %H:%M:%S') UTC, commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo '+dirty'), cluster $BC_CLUSTER_DIR, $(nproc) cores, load average $(loadavg), nice $(nice)"
say "runs: networks ${NETWORK_LIST} x $NODES nodes${UNRELATED:+, then again with $UNRELATED_PODS unrelated pods and $UNRELATED_SECRETS unrelated Secrets in $UNRELATED_NS}; at rest $IDLE_SECS s"
kubectl apply -f hack/bench/flowschemas.yaml >/dev/null
kubectl delete namespace "$UNRELATED_NS" --ignore-not-found --wait=false >/dev/null

# run_one is called as a plain command so that set -e holds inside it; a run
# whose networks did not all get Ready sets TIMED_OUT and ends the series.
TIMED_OUT=0
for n in "${NETWORK_COUNTS[@]}"; do
	run_one "$n" ""
	((TIMED_OUT == 0)) || break
done
if [[ -n "$UNRELATED" ]] && ((TIMED_OUT == 0)); then
	make_background
	for n in "${NETWORK_COUNTS[@]}"; do
		run_one "$n" "$UNRELATED_PODS pods, $UNRELATED_SECRETS Secrets"
		((TIMED_OUT == 0)) || break
	done
fi

say ""
say "summary (times in s after the networks were created; MiB; writes by the controller's ServiceAccount, in parentheses the apiserver_request_total rows attributed to it, Events not included):"
say "| run | networks x nodes | background | load 1m start / end | pods Ready | networks Ready | ctl CPU s converge | ctl CPU s rest ${IDLE_SECS} s | VmRSS synced / converged / rest | VmHWM | writes at rest (rows) | writes converge |"
say "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for row in "${ROWS[@]}"; do say "$row"; done
if [[ -n "$UNRELATED" ]]; then
	for n in "${NETWORK_COUNTS[@]}"; do
		[[ -n "${RSS_REST_BY_RUN[n$n-bg]:-}" ]] || continue
		say "unrelated objects, $n networks: VmRSS synced with no network $(mib "${RSS_IDLE_BY_RUN[n$n]}") -> $(mib "${RSS_IDLE_BY_RUN[n$n-bg]}") MiB ($(minus "$(mib "${RSS_IDLE_BY_RUN[n$n-bg]}")" "$(mib "${RSS_IDLE_BY_RUN[n$n]}")") MiB), at rest $(mib "${RSS_REST_BY_RUN[n$n]}") -> $(mib "${RSS_REST_BY_RUN[n$n-bg]}") MiB ($(minus "$(mib "${RSS_REST_BY_RUN[n$n-bg]}")" "$(mib "${RSS_REST_BY_RUN[n$n]}")") MiB)"
	done
	kubectl delete namespace "$UNRELATED_NS" --ignore-not-found --wait=false >/dev/null
	BACKGROUND_MADE=0
fi
exit "$TIMED_OUT"
