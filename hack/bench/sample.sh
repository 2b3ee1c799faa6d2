#!/usr/bin/env bash
# Samples, every INTERVAL seconds, the CPU share (of one core, since the last
# sample) and VmRSS of the local cluster's components and of the benchmark's
# controller, plus the load average and the machine's free memory: evidence
# for which component limits a large benchmark run.
#
# usage: BC_CLUSTER_DIR=... hack/bench/sample.sh [INTERVAL] >samples.txt
# Stop it with kill PID (it runs until then).
set -euo pipefail
INTERVAL=${1:-10}
DIR=${BC_CLUSTER_DIR:?set BC_CLUSTER_DIR}
HZ=$(getconf CLK_TCK)
declare -A last
printf '%-8s %-16s' time load1
for c in etcd kube-apiserver kube-controller-manager podsim controller; do printf ' %-22s' "$c(cpu%,MiB)"; done
printf ' %s\n' memavail_MiB
while :; do
	line=$(printf '%-8s %-16s' "$(date -u +%H:%M:%S)" "$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' /)")
	for c in etcd kube-apiserver kube-controller-manager podsim controller; do
		pid=""
		if [[ $c == controller ]]; then
			pid=$(pgrep -n -f "^target/release/bitcoin-controller --kubeconfig $DIR/" || true)
		else
			read -r pid _ <"$DIR/pids/$c.pid" 2>/dev/null || true
		fi
		if [[ -n "$pid" && -r /proc/$pid/stat ]]; then
			ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
			rss=$(awk '/^VmRSS/ {printf "%d", $2 / 1024}' "/proc/$pid/status")
			prev=${last[$c:$pid]:-$ticks}
			last[$c:$pid]=$ticks
			line+=$(printf ' %-22s' "$(awk -v d=$((ticks - prev)) -v hz="$HZ" -v i="$INTERVAL" 'BEGIN {printf "%.0f", 100 * d / hz / i}'),$rss")
		else
			line+=$(printf ' %-22s' -)
		fi
	done
	echo "$line $(awk '/^MemAvailable/ {printf "%d", $2 / 1024}' /proc/meminfo)"
	sleep "$INTERVAL"
done
