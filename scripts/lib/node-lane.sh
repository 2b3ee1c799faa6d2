#!/usr/bin/env bash
# The real-node lane of scripts/local-cluster.sh (BC_NODE=kubelet): containerd,
# kubelet, kube-scheduler, kube-proxy and CoreDNS next to the control plane,
# a CNI bridge for the pods and a guard firewall. Sourced by local-cluster.sh,
# whose helpers (log, die, start_component, wait_until, stop_component,
# component_pid, kubectl_admin, issue_cert, write_kubeconfig) it uses.
#
# Safety rules (docs/local-cluster.md):
# - no kernel tunable of the machine is written, except ip_forward, which
#   `up` records and `down` puts back. containerd, the kubelet, kube-proxy
#   and CoreDNS run in a private mount namespace in which /proc/sys is
#   read-only and the files the kubelet checks (protectKernelDefaults) are
#   overlaid with the values it expects; /run, /var/lib and /var/log are the
#   state dir's, so nothing they write lands outside it;
# - pods reach only the pod subnet, the node address (API server, kubelet,
#   DNS) and nothing else: a guard nft table drops the rest and anything
#   pod-bound from elsewhere;
# - `down` removes every process, mount, network namespace, link, rule and
#   cgroup the lane made.
# shellcheck shell=bash

NODE_DIR="${STATE_DIR}/node"
NS_DIR="${NODE_DIR}/ns"
CONTAINERD_DIR="${NODE_DIR}/containerd"
CONTAINERD_SOCK="${CONTAINERD_DIR}/containerd.sock"
KUBELET_DIR="${NODE_DIR}/kubelet"
KUBELET_KUBECONFIG="${STATE_DIR}/kubelet.kubeconfig"
SCHEDULER_KUBECONFIG="${STATE_DIR}/kube-scheduler.kubeconfig"
PROXY_KUBECONFIG="${STATE_DIR}/kube-proxy.kubeconfig"
COREDNS_KUBECONFIG="${STATE_DIR}/coredns.kubeconfig"
COREDNS_VERSION=v1.15.0
# Values the kubelet expects of these kernel tunables; inside the namespace
# the files show them, the machine's stay as they are.
KUBELET_SYSCTLS="vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000"
# shellcheck disable=SC2034 # used by local-cluster.sh
NODE_COMPONENTS="node-ns containerd kubelet kube-scheduler kube-proxy coredns"

node_lane() { [[ "${NODE_LANE:-podsim}" == kubelet ]]; }

# Derived settings of the lane (called after load/prepare of cluster.env).
node_settings() {
	POD_SUBNET="${POD_NET}.0/24"
	NODE_IP="${POD_NET}.1"
	BRIDGE="bc${POD_NET##*.}"
	# Locally administered, from the node address (10.244.2.1: 02:bc:0a:f4:02:01).
	# shellcheck disable=SC2086 # split the octets
	BRIDGE_MAC="$(IFS=. && printf '02:bc:%02x:%02x:%02x:%02x' ${NODE_IP})"
	GUARD_TABLE="bc_guard_${BRIDGE}"
	CGROUP_NAME="bitcoin-controller-${KUBELET_NODE_NAME}"
	KUBELET_PORT="${NODE_PORT_BASE}"
	KUBELET_HEALTHZ_PORT=$((NODE_PORT_BASE + 1))
	SCHEDULER_PORT=$((NODE_PORT_BASE + 2))
	PROXY_HEALTHZ_PORT=$((NODE_PORT_BASE + 3))
	PROXY_METRICS_PORT=$((NODE_PORT_BASE + 4))
	COREDNS_HEALTH_PORT=$((NODE_PORT_BASE + 5))
	COREDNS_READY_PORT=$((NODE_PORT_BASE + 6))
}

# ---------------------------------------------------------------- tools

# The Debian packages of the node components that are not installed.
node_missing_packages() {
	local tool plugin missing=()
	declare -A pkgs=([containerd]=containerd [ctr]=containerd [runc]=runc [nft]=nftables
		[conntrack]=conntrack [umoci]=umoci [skopeo]=skopeo [unshare]=util-linux
		[nsenter]=util-linux [ip]=iproute2 [iptables]=iptables [gcc]=gcc)
	for tool in "${!pkgs[@]}"; do
		command -v "${tool}" >/dev/null || missing+=("${pkgs[${tool}]}")
	done
	for plugin in bridge host-local loopback; do
		[[ -x "/usr/lib/cni/${plugin}" ]] || missing+=(containernetworking-plugins)
	done
	if ((${#missing[@]} > 0)); then printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' '; fi
}

# Installs missing node components from Debian (root with apt-get, unless
# BC_NO_INSTALL=1), so a fresh machine runs the lane; fails loudly, with how
# to get them, if they are still missing. A policy-rc.d that refuses service
# starts is in place during the install, so the containerd package does not
# start a containerd of the machine's own next to the lane's.
node_require_tools() {
	local pkg policy=/usr/sbin/policy-rc.d
	pkg="$(node_missing_packages)"
	if [[ -n "${pkg}" && "${BC_NO_INSTALL:-0}" != 1 && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
		log "installing the node components from Debian: ${pkg}"
		local made_policy=0
		if [[ ! -e "${policy}" ]]; then
			printf '#!/bin/sh\nexit 101\n' >"${policy}" && chmod 755 "${policy}" && made_policy=1
		fi
		# shellcheck disable=SC2086 # one word per package
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${pkg}; } >/dev/null ||
			log "apt-get install ${pkg}failed"
		if ((made_policy)); then rm -f "${policy}"; fi
		pkg="$(node_missing_packages)"
	fi
	if [[ -n "${pkg}" ]]; then
		die "the real-node lane needs: ${pkg}(Debian: apt-get update && apt-get install -y ${pkg})"
	fi
	[[ -d /sys/fs/cgroup/memory && -d /sys/fs/cgroup/cpu ]] ||
		die "the real-node lane expects cgroup v1 (hybrid) hierarchies under /sys/fs/cgroup"
}

# CoreDNS from the wrapper module hack/coredns, cached like the k8s builds.
node_coredns_bin() {
	local dir="${BC_CACHE_ROOT}/coredns-${COREDNS_VERSION}/bin"
	if [[ ! -x "${dir}/coredns" ]]; then
		_bc_require_go "${REPO_ROOT}/hack/coredns" "CoreDNS ${COREDNS_VERSION}" || die "Go is needed to build CoreDNS"
		_bc_go_build "coredns ${COREDNS_VERSION}" "${REPO_ROOT}/hack/coredns" "${dir}" \
			"-s -w -X github.com/coredns/coredns/coremain.GitCommit=${COREDNS_VERSION}" . ||
			die "could not build CoreDNS"
	fi
	[[ -x "${dir}/coredns" ]] || die "CoreDNS build produced no ${dir}/coredns"
	BC_COREDNS="${dir}/coredns"
}

# ---------------------------------------------------------------- pki

node_pki() {
	issue_cert kubelet "/O=system:nodes/CN=system:node:${KUBELET_NODE_NAME}"
	issue_cert kube-scheduler "/CN=system:kube-scheduler"
	issue_cert kube-proxy "/CN=system:kube-proxy"
	issue_cert coredns "/CN=system:coredns"
	issue_cert kube-apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
}

node_kubeconfigs() {
	local name
	for name in kubelet kube-scheduler kube-proxy coredns; do
		write_kubeconfig "${STATE_DIR}/${name}.kubeconfig" "${name}" \
			--client-certificate "${PKI_DIR}/${name}.crt" --client-key "${PKI_DIR}/${name}.key" --embed-certs
	done
}

# ---------------------------------------------------------------- network

# The host side: record ip_forward, make the bridge with the node address,
# the guard table. Idempotent.
node_network_up() {
	if [[ ! -f "${NODE_DIR}/ip_forward.saved" ]]; then
		cat /proc/sys/net/ipv4/ip_forward >"${NODE_DIR}/ip_forward.saved"
		log "recorded net.ipv4.ip_forward=$(cat "${NODE_DIR}/ip_forward.saved") (restored by down)"
	fi
	if ! ip link show "${BRIDGE}" >/dev/null 2>&1; then
		log "creating bridge ${BRIDGE} ${NODE_IP}/24 (pod subnet ${POD_SUBNET})"
		ip link add "${BRIDGE}" type bridge
		echo "${BRIDGE}" >"${NODE_DIR}/bridge.created"
	fi
	# A bridge without an address of its own takes the lowest of its ports'
	# (the pods' host-side veths), and a new one when that pod goes: every
	# other pod's cached gateway address then points nowhere, and its
	# traffic off the pod subnet (Services, DNS) is lost until it asks
	# again. A fixed address stays.
	ip link set "${BRIDGE}" address "${BRIDGE_MAC}"
	ip addr replace "${NODE_IP}/24" dev "${BRIDGE}"
	ip link set "${BRIDGE}" up
	node_guard_up
	# Pods on the bridge reach Service addresses only through the host's
	# routing (DNAT by kube-proxy), so forwarding must be on; the CNI bridge
	# plugin (isGateway) would switch it on itself. The guard keeps it to
	# the bridge.
	echo 1 >/proc/sys/net/ipv4/ip_forward
}

node_guard_up() {
	# With ip_forward off before `up`, the machine forwarded nothing: keep
	# it so for everything but the pod bridge.
	local others=""
	if [[ "$(cat "${NODE_DIR}/ip_forward.saved" 2>/dev/null)" == 0 ]]; then
		others="iifname != \"${BRIDGE}\" oifname != \"${BRIDGE}\" counter drop comment \"no forwarding besides the pod bridge (ip_forward was 0 before up)\""
	fi
	nft -f - <<EOF
table inet ${GUARD_TABLE}
delete table inet ${GUARD_TABLE}
table inet ${GUARD_TABLE} {
	comment "bitcoin-controller local-cluster guard: pods on ${BRIDGE} reach only ${POD_SUBNET} and ${NODE_IP}"
	chain forward {
		type filter hook forward priority filter - 10; policy accept;
		iifname "${BRIDGE}" oifname != "${BRIDGE}" counter drop comment "pod traffic leaving the pod bridge"
		oifname "${BRIDGE}" iifname != "${BRIDGE}" counter drop comment "traffic into the pod bridge from elsewhere"
		iifname "${BRIDGE}" ip daddr != ${POD_SUBNET} counter drop comment "pod traffic to outside the pod subnet"
		${others}
	}
	chain input {
		type filter hook input priority filter - 10; policy accept;
		iifname "${BRIDGE}" ip daddr != ${NODE_IP} counter drop comment "pods may reach the host only on the node address"
		iifname "${BRIDGE}" meta nfproto ipv6 counter drop comment "no IPv6 from pods to the host"
		iifname != { "lo", "${BRIDGE}" } ip daddr ${NODE_IP} counter drop comment "the node address is not reachable from outside"
	}
}
EOF
}

node_network_down() {
	local family table saved
	nft delete table inet "${GUARD_TABLE}" 2>/dev/null || true
	# kube-proxy's nftables tables (one kube-proxy per machine: `up` checks),
	# if this lane's kube-proxy made them: a lane whose `up` stopped at that
	# check must not delete the running lane's tables on its way down (its
	# pods would lose every Service address until kube-proxy's next resync).
	if [[ -f "${NODE_DIR}/kube-proxy.started" ]]; then
		for family in ip ip6; do
			nft delete table "${family}" kube-proxy 2>/dev/null || true
		done
		rm -f "${NODE_DIR}/kube-proxy.started"
	fi
	node_iptables_cleanup
	if [[ -f "${NODE_DIR}/bridge.created" ]] && ip link show "${BRIDGE}" >/dev/null 2>&1; then
		ip link delete "${BRIDGE}"
		log "deleted bridge ${BRIDGE}"
	fi
	# Leftover host-side veths of the bridge (they go with their pod's network
	# namespace; this is for a namespace someone else still pins).
	for table in $(ip -o link show master "${BRIDGE}" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
		ip link delete "${table}" 2>/dev/null || true
	done
	conntrack -D -s "${POD_SUBNET}" >/dev/null 2>&1 || true
	conntrack -D -d "${POD_SUBNET}" >/dev/null 2>&1 || true
	if [[ -f "${NODE_DIR}/ip_forward.saved" ]]; then
		saved="$(cat "${NODE_DIR}/ip_forward.saved")"
		echo "${saved}" >/proc/sys/net/ipv4/ip_forward
		log "restored net.ipv4.ip_forward=${saved}"
	fi
}

# The kubelet makes KUBE-* canary chains with iptables (nft backend on
# Debian). Delete our chains, then the iptables tables `up` found missing,
# if they are empty now.
node_iptables_cleanup() {
	local cmd table chain
	for cmd in iptables ip6tables; do
		command -v "${cmd}" >/dev/null || continue
		for table in mangle nat filter; do
			for chain in $("${cmd}" -t "${table}" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[^ ]*\)$/\1/p'); do
				"${cmd}" -t "${table}" -F "${chain}" 2>/dev/null || true
			done
			for chain in $("${cmd}" -t "${table}" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[^ ]*\)$/\1/p'); do
				"${cmd}" -t "${table}" -X "${chain}" 2>/dev/null || true
			done
		done
	done
	[[ -f "${NODE_DIR}/nft-tables.before" ]] || return 0
	while read -r _ family table; do
		[[ "${table}" =~ ^(filter|nat|mangle|raw|security)$ ]] || continue
		grep -qxF "table ${family} ${table}" "${NODE_DIR}/nft-tables.before" && continue
		if ! nft list table "${family}" "${table}" 2>/dev/null | grep -qE '^\s+(ip|ip6|meta|iifname|oifname|counter|jump|tcp|udp|ct|mark|fib)'; then
			nft delete table "${family}" "${table}" 2>/dev/null || true
		fi
	done < <(nft list tables 2>/dev/null)
}

# ---------------------------------------------------------------- mount ns

ns_pid() { component_pid node-ns; }

# in_ns <command>...: runs a command in the node's mount namespace.
in_ns() { nsenter -t "$(ns_pid)" -m -- "$@"; }

# The private mount namespace every node component runs in: /proc/sys
# read-only with the kubelet's expected values overlaid; /run, /var/lib and
# /var/log bound to the state dir.
node_ns_up() {
	local sleep_bin pid entry key value
	[[ -n "$(ns_pid)" ]] && return 0
	sleep_bin="$(command -v sleep)"
	mkdir -p "${NS_DIR}/run/netns" "${NS_DIR}/var-lib" "${NS_DIR}/var-log" "${NS_DIR}/sysctl"
	for entry in ${KUBELET_SYSCTLS}; do
		key="${entry%%=*}"
		value="${entry#*=}"
		echo "${value}" >"${NS_DIR}/sysctl/${key//\//.}"
	done
	log "starting the node's mount namespace (holder: ${sleep_bin} infinity)"
	setsid unshare --mount --propagation private -- "${sleep_bin}" infinity </dev/null >/dev/null 2>&1 9>&- &
	pid=$!
	echo "${pid} ${sleep_bin}" >"$(pid_file node-ns)"
	local tries=0
	until [[ "$(readlink "/proc/${pid}/ns/mnt" 2>/dev/null)" != "$(readlink /proc/self/ns/mnt)" ]] &&
		[[ -n "$(component_pid node-ns)" ]]; do
		((++tries < 100)) || die "the mount namespace holder did not start"
		sleep 0.05
	done
	# shellcheck disable=SC2016 # expanded by the inner shell
	in_ns sh -euc '
		ns="$1"; shift
		mount --bind "$ns/run" /run
		mount --bind "$ns/var-lib" /var/lib
		mount --bind "$ns/var-log" /var/log
		mount --bind /proc/sys /proc/sys
		mount -o remount,bind,ro /proc/sys
		for f in "$ns"/sysctl/*; do
			mount --bind "$f" "/proc/sys/$(basename "$f" | tr . /)"
		done
	' sh "${NS_DIR}" || die "setting up the node's mount namespace failed"
	log "mount namespace ready: /proc/sys read-only, kubelet tunables overlaid, /run /var/lib /var/log in ${NS_DIR}"
}

# start_in_ns <name> <binary> <args>...: like start_component, inside the
# node's mount namespace (nsenter execs the binary, so the pid is its).
start_in_ns() {
	local name="$1" binary="$2"
	shift 2
	if [[ -n "$(component_pid "${name}")" ]]; then
		log "${name} already running (pid $(component_pid "${name}"))"
		return 0
	fi
	log "starting ${name} (log: ${LOG_DIR}/${name}.log)"
	# umask 022: local-cluster.sh runs with 077, and containerd would make
	# the containers' root directories (and the kubelet its volume
	# directories) unreadable for the non-root users in the pods.
	(
		umask 022
		exec setsid nsenter -t "$(ns_pid)" -m -- "${binary}" "$@" </dev/null >>"${LOG_DIR}/${name}.log" 2>&1 9>&-
	) &
	echo "$! ${binary}" >"$(pid_file "${name}")"
	local tries=0
	until [[ -n "$(component_pid "${name}")" ]] || ((++tries > 100)); do sleep 0.02; done
}

# ---------------------------------------------------------------- cgroups

cgroup_hierarchies() {
	findmnt -rn -t cgroup,cgroup2 -o TARGET | grep '^/sys/fs/cgroup/'
}

node_cgroups_up() {
	local h
	for h in $(cgroup_hierarchies); do
		mkdir -p "${h}/${CGROUP_NAME}"
	done
	if [[ -f /sys/fs/cgroup/cpuset/cpuset.cpus ]]; then
		cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/${CGROUP_NAME}/cpuset.cpus"
		cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/${CGROUP_NAME}/cpuset.mems"
	fi
}

# Pids of every process in the lane's cgroups (the containers).
cgroup_pids() {
	local h
	for h in $(cgroup_hierarchies); do
		[[ -d "${h}/${CGROUP_NAME}" ]] || continue
		find "${h}/${CGROUP_NAME}" -name cgroup.procs -exec cat {} + 2>/dev/null
	done | sort -un
}

node_cgroups_down() {
	local h tries
	for h in $(cgroup_hierarchies); do
		[[ -d "${h}/${CGROUP_NAME}" ]] || continue
		for tries in 1 2 3 4 5 6 7 8 9 10; do
			find "${h}/${CGROUP_NAME}" -depth -type d -exec rmdir {} + 2>/dev/null || true
			[[ -d "${h}/${CGROUP_NAME}" ]] || break
			sleep 0.5
		done
		[[ ! -d "${h}/${CGROUP_NAME}" ]] || log "warning: could not remove ${h}/${CGROUP_NAME}"
	done
}

# Pids (other than the holder) in the node's mount namespace: containerd's
# shims and anything else the lane started there.
ns_member_pids() {
	local holder="$1" ns p
	ns="$(readlink "/proc/${holder}/ns/mnt" 2>/dev/null)" || return 0
	for p in /proc/[0-9]*; do
		p="${p#/proc/}"
		[[ "${p}" == "${holder}" ]] && continue
		if [[ "$(readlink "/proc/${p}/ns/mnt" 2>/dev/null)" == "${ns}" ]]; then echo "${p}"; fi
	done
}

# Pids of containerd's shims in the node's mount namespace.
shim_pids() {
	local p
	for p in "$@"; do
		if [[ "$(cat "/proc/${p}/comm" 2>/dev/null)" == containerd-shim* ]]; then echo "${p}"; fi
	done
}

# node_kill_workloads [all]: kills the containers (by cgroup) and the shims;
# with `all`, every process left in the node's mount namespace.
node_kill_workloads() {
	local holder pids tries
	holder="$(ns_pid)"
	for tries in $(seq 1 50); do
		pids="$(cgroup_pids)"
		if [[ -n "${holder}" && "${1:-}" == all ]]; then
			pids+=" $(ns_member_pids "${holder}")"
		elif [[ -n "${holder}" ]]; then
			# shellcheck disable=SC2046 # a list of pids
			pids+=" $(shim_pids $(ns_member_pids "${holder}"))"
		fi
		pids="$(echo "${pids}" | xargs)"
		[[ -n "${pids}" ]] || return 0
		((tries == 1)) && log "stopping the node's containers and shims (pids ${pids})"
		if ((tries < 10)); then
			# shellcheck disable=SC2086 # a list of pids
			kill -TERM ${pids} 2>/dev/null || true
		else
			# shellcheck disable=SC2086
			kill -KILL ${pids} 2>/dev/null || true
		fi
		sleep 0.3
	done
	log "warning: processes left in the node's cgroups or namespace: $(cgroup_pids | xargs)"
}

# ---------------------------------------------------------------- components

write_containerd_config() {
	mkdir -p "${CONTAINERD_DIR}" "${NODE_DIR}/cni/net.d" "${NODE_DIR}/cni/ipam"
	cat >"${CONTAINERD_DIR}/config.toml" <<EOF
# containerd of the local-cluster real-node lane (scripts/lib/node-lane.sh)
version = 2
root = "${CONTAINERD_DIR}/root"
state = "${CONTAINERD_DIR}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "${CONTAINERD_SOCK}"

[ttrpc]
  address = "${CONTAINERD_SOCK}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "${CONTAINERD_DIR}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/bc-pause:1"
  # No CAP_SYS_RESOURCE in this VM: runc may not lower oom_score_adj.
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${NODE_DIR}/cni/net.d"
    max_conf_num = 1
EOF
	cat >"${NODE_DIR}/cni/net.d/10-bc-pods.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "bc-pods",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "${NODE_DIR}/cni/ipam",
        "ranges": [[{ "subnet": "${POD_SUBNET}", "gateway": "${NODE_IP}" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    }
  ]
}
EOF
}

start_containerd() {
	write_containerd_config
	start_in_ns containerd "$(command -v containerd)" --config "${CONTAINERD_DIR}/config.toml" --log-level warn
	wait_until containerd "containerd socket" \
		ctr --address "${CONTAINERD_SOCK}" version
}

import_images() {
	log "building and importing the images (scripts/image.sh)"
	"${REPO_ROOT}/scripts/image.sh" build pause node controller || die "scripts/image.sh build failed"
	BC_CONTAINERD_ADDRESS="${CONTAINERD_SOCK}" "${REPO_ROOT}/scripts/image.sh" import pause node controller ||
		die "scripts/image.sh import failed"
}

write_kubelet_config() {
	mkdir -p "${KUBELET_DIR}"
	cat >"${NODE_DIR}/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${NODE_IP}
port: ${KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: ${KUBELET_HEALTHZ_PORT}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: ${PKI_DIR}/ca.crt
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://${CONTAINERD_SOCK}
cgroupDriver: cgroupfs
cgroupRoot: /${CGROUP_NAME}
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
protectKernelDefaults: true
makeIPTablesUtilChains: false
clusterDomain: cluster.local
clusterDNS:
  - ${NODE_IP}
resolvConf: ""
rotateCertificates: false
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
nodeStatusUpdateFrequency: 5s
syncFrequency: 10s
maxPods: 110
EOF
}

start_kubelet() {
	write_kubelet_config
	start_in_ns kubelet "${BC_KUBELET}" \
		--config "${NODE_DIR}/kubelet-config.yaml" \
		--kubeconfig "${KUBELET_KUBECONFIG}" \
		--root-dir "${KUBELET_DIR}" \
		--hostname-override "${KUBELET_NODE_NAME}" \
		--node-ip "${NODE_IP}" \
		--v=1
	wait_until kubelet "Node ${KUBELET_NODE_NAME} Ready" \
		kubectl_admin wait --for condition=Ready --timeout 1s "node/${KUBELET_NODE_NAME}"
}

start_scheduler() {
	start_in_ns kube-scheduler "${BC_KUBE_SCHEDULER}" \
		--kubeconfig "${SCHEDULER_KUBECONFIG}" \
		--authentication-kubeconfig "${SCHEDULER_KUBECONFIG}" \
		--authorization-kubeconfig "${SCHEDULER_KUBECONFIG}" \
		--bind-address 127.0.0.1 \
		--secure-port "${SCHEDULER_PORT}" \
		--leader-elect=false \
		--v=1
	wait_until kube-scheduler "kube-scheduler /healthz" \
		curl -skf "https://127.0.0.1:${SCHEDULER_PORT}/healthz"
}

start_proxy() {
	cat >"${NODE_DIR}/kube-proxy-config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: ${PROXY_KUBECONFIG}
mode: nftables
hostnameOverride: ${KUBELET_NODE_NAME}
clusterCIDR: ${POD_SUBNET}
bindAddress: ${NODE_IP}
healthzBindAddress: 127.0.0.1:${PROXY_HEALTHZ_PORT}
metricsBindAddress: 127.0.0.1:${PROXY_METRICS_PORT}
nodePortAddresses:
  - ${NODE_IP}/32
masqueradeAll: true
# Leave the machine's conntrack tunables alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
EOF
	# The tables are named 'kube-proxy' whoever made them: `down` deletes
	# them only if this lane's kube-proxy ran, never another lane's.
	touch "${NODE_DIR}/kube-proxy.started"
	start_in_ns kube-proxy "${BC_KUBE_PROXY}" --config "${NODE_DIR}/kube-proxy-config.yaml" --v=1
	wait_until kube-proxy "kube-proxy /healthz" \
		curl -sf "http://127.0.0.1:${PROXY_HEALTHZ_PORT}/healthz"
}

apply_coredns_rbac() {
	kubectl_admin apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:coredns
rules:
  - apiGroups: [""]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:coredns
subjects:
  - apiGroup: rbac.authorization.k8s.io
    kind: User
    name: system:coredns
EOF
}

start_coredns() {
	apply_coredns_rbac
	cat >"${NODE_DIR}/Corefile" <<EOF
.:53 {
    bind ${NODE_IP}
    errors
    health 127.0.0.1:${COREDNS_HEALTH_PORT}
    ready 127.0.0.1:${COREDNS_READY_PORT}
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig ${COREDNS_KUBECONFIG}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    loadbalance
}
EOF
	start_in_ns coredns "${BC_COREDNS}" -conf "${NODE_DIR}/Corefile"
	wait_until coredns "CoreDNS /ready" \
		curl -sf "http://127.0.0.1:${COREDNS_READY_PORT}/ready"
}

# ---------------------------------------------------------------- storage

# Local PersistentVolumes for spec.storage (docs/local-cluster.md): a pool of
# directories under the node dir, each one a `local` PersistentVolume of the
# default StorageClass bc-local (no provisioner, WaitForFirstConsumer), so a
# claim binds when its pod is scheduled and the kubelet mounts the directory
# (with the pod's fsGroup, which hostPath volumes would not get). Released
# volumes are not reused (nothing would wipe them): the pool is sized for a
# lane run. `down` removes them with the state dir; the kubelet's mounts of
# them live in the node's mount namespace and go with it.
LOCAL_PV_COUNT="${BC_LOCAL_PVS:-24}"
LOCAL_PV_DIR="${NODE_DIR}/volumes"
STORAGE_CLASS=bc-local

node_storage_up() {
	local i name
	log "local storage: StorageClass ${STORAGE_CLASS} (default) and ${LOCAL_PV_COUNT} PersistentVolumes in ${LOCAL_PV_DIR}"
	mkdir -p "${LOCAL_PV_DIR}"
	{
		cat <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: ${STORAGE_CLASS}
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
EOF
		for ((i = 0; i < LOCAL_PV_COUNT; i++)); do
			printf -v name 'bc-local-%02d' "${i}"
			mkdir -p "${LOCAL_PV_DIR}/${name}"
			cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: ${name}
spec:
  capacity:
    storage: 1Gi
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ${STORAGE_CLASS}
  local:
    path: ${LOCAL_PV_DIR}/${name}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - key: kubernetes.io/hostname
          operator: In
          values: [${KUBELET_NODE_NAME}]
EOF
		done
	} | kubectl_admin apply -f - >/dev/null || die "creating the local PersistentVolumes failed"
}

deploy_controller() {
	log "deploying the controller in-cluster (manifests/controller.yaml, image bitcoin-controller:latest)"
	kubectl_admin apply -f "${REPO_ROOT}/manifests/controller.yaml" >/dev/null
	wait_until kubelet "controller Deployment available" \
		kubectl_admin -n "${CONTROLLER_NAMESPACE}" rollout status deployment/bitcoin-controller --timeout 1s
}

# ---------------------------------------------------------------- up / down

node_check_free() {
	local port
	for port in "${KUBELET_PORT}" "${KUBELET_HEALTHZ_PORT}" "${SCHEDULER_PORT}" "${PROXY_HEALTHZ_PORT}" \
		"${PROXY_METRICS_PORT}" "${COREDNS_HEALTH_PORT}" "${COREDNS_READY_PORT}"; do
		if [[ -z "$(component_pid kubelet)" ]] && port_in_use "${port}"; then
			die "port ${port} of the node components is taken (ss -ltnp); use another BC_NODE_PORT_BASE"
		fi
	done
	if [[ -z "$(component_pid kube-proxy)" ]] && nft list table ip kube-proxy >/dev/null 2>&1; then
		die "another kube-proxy (nft table 'ip kube-proxy') runs on this machine: one real-node lane at a time"
	fi
	if [[ ! -f "${NODE_DIR}/bridge.created" ]] && ip link show "${BRIDGE}" >/dev/null 2>&1; then
		die "a link named ${BRIDGE} exists already (another cluster with BC_POD_NET=${POD_NET}?)"
	fi
}

# Before the control plane: network, so the API server can bind NODE_IP.
node_up_network() {
	node_require_tools
	mkdir -p "${NODE_DIR}"
	node_check_free
	[[ -f "${NODE_DIR}/nft-tables.before" ]] || nft list tables >"${NODE_DIR}/nft-tables.before" 2>/dev/null || true
	node_network_up
}

# After the control plane.
node_up_rest() {
	node_kubeconfigs
	node_coredns_bin
	node_cgroups_up
	node_ns_up
	start_containerd
	import_images
	start_kubelet
	start_scheduler
	start_proxy
	start_coredns
	node_storage_up
	deploy_controller
}

# Stops the node (its network goes with node_network_down, after the API
# server, which still deletes its endpoint lease on the node address).
node_down() {
	local name
	# Without the kubelet nothing restarts the containers we stop next.
	for name in kubelet kube-scheduler kube-proxy coredns; do
		stop_component "${name}"
	done
	node_kill_workloads
	stop_component containerd
	node_kill_workloads all
	stop_component node-ns
	node_cgroups_down
}
