#!/usr/bin/env bash
# Local Kubernetes control plane for development and end-to-end tests:
# etcd, kube-apiserver, kube-controller-manager and a node, as plain
# processes on this machine. The node is one of two lanes (BC_NODE):
#   podsim   (default) the pod simulator plays kubelet; everything on 127.0.0.1
#   kubelet  a real node: containerd, kubelet, kube-scheduler, kube-proxy,
#            CNI bridge, CoreDNS, the controller in-cluster
#            (scripts/lib/node-lane.sh)
# See docs/local-cluster.md.
#
# usage: scripts/local-cluster.sh up | down [--keep] | status | env
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${BC_CLUSTER_DIR:-${REPO_ROOT}/.local/cluster}"
PKI_DIR="${STATE_DIR}/pki"
LOG_DIR="${STATE_DIR}/logs"
PID_DIR="${STATE_DIR}/pids"
# Written by `up`: ports and binaries this cluster was started with, so that
# `down`, `status` and `env` use the same ones whatever the environment says.
CLUSTER_ENV="${STATE_DIR}/cluster.env"
ADMIN_KUBECONFIG="${STATE_DIR}/admin.kubeconfig"
CONTROLLER_KUBECONFIG="${STATE_DIR}/controller.kubeconfig"
KCM_KUBECONFIG="${STATE_DIR}/kube-controller-manager.kubeconfig"

SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1 # first address of SERVICE_CIDR: the `kubernetes` Service
NODE_NAME=podsim
CONTROLLER_NAMESPACE=bitcoin-controller
CONTROLLER_SA=bitcoin-controller
TOKEN_DURATION=24h
TOKEN_REFRESH_AFTER_MIN=720 # re-issue the controller token when older (min)
START_TIMEOUT="${BC_START_TIMEOUT:-120}"
STOP_TIMEOUT=20
# kube-controller-manager controllers: what workloads need, nothing that
# manages nodes or evicts pods (no node-lifecycle, node-ipam,
# taint-eviction or pod-garbage-collector controllers): the simulated node
# must keep its pods. No endpoints / endpointslice controllers either: pod
# addresses are loopback addresses, which Endpoints reject (nothing here
# needs Service endpoints; nodes find each other through the status).
# The claim and volume protection controllers take the protection
# finalizers off claims (spec.storage) and volumes no pod uses any more,
# else a deleted claim stays Terminating.
KCM_CONTROLLERS=serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,namespace-controller,garbage-collector-controller,clusterrole-aggregation-controller,statefulset-controller,replicaset-controller,deployment-controller,persistentvolumeclaim-protection-controller,persistentvolume-protection-controller
# A real node (BC_NODE=kubelet) needs more: node-lifecycle takes the
# not-ready taint off a Ready node (else nothing schedules), the endpoint
# slices feed kube-proxy and CoreDNS, pod garbage collection and taint
# eviction clean up after a node; the persistent-volume binder binds claims
# to the lane's local volumes.
KCM_NODE_CONTROLLERS=node-lifecycle-controller,taint-eviction-controller,pod-garbage-collector-controller,endpointslice-controller,endpoints-controller,persistentvolume-binder-controller

log() { echo "local-cluster: $*" >&2; }
die() {
	log "error: $*"
	exit 1
}

usage() {
	cat >&2 <<EOF
usage: $0 up | down [--keep] | status | env | restart-apiserver | compact-etcd

  up      start etcd, kube-apiserver, kube-controller-manager and podsim
          (BC_PODSIM=0 skips podsim); with BC_NODE=kubelet a real node
          instead (containerd, kubelet, kube-scheduler, kube-proxy, CNI,
          CoreDNS) and the controller in-cluster; a no-op when running
  down    stop what 'up' started and delete the state dir (--keep keeps it)
  status  show the state dir, components and the API server version
  env     print export lines: eval "\$($0 env)"
  restart-apiserver   stop kube-apiserver and start it again (its watch
          cache starts over: clients resuming older watches get 410 Gone)
  compact-etcd        compact etcd's history up to its current revision
          (what kube-apiserver's compactor does every 5 minutes)
EOF
	exit 2
}

# ---------------------------------------------------------------- processes

pid_file() { echo "${PID_DIR}/$1.pid"; }

# Prints the pid of a component if it is alive and still the process we
# started, else nothing. "Still ours": its command line starts with the
# recorded binary (second word for a script run by its interpreter).
component_pid() {
	local name="$1" pid binary
	[[ -f "$(pid_file "${name}")" ]] || return 0
	read -r pid binary <"$(pid_file "${name}")"
	if { tr '\0' '\n' <"/proc/${pid}/cmdline"; } 2>/dev/null | head -n2 | grep -qxF "${binary}"; then
		echo "${pid}"
	fi
}

log_tail() {
	local file="${LOG_DIR}/$1.log"
	if [[ -s "${file}" ]]; then
		log "last lines of ${file}:"
		tail -n 30 "${file}" >&2
	else
		log "${file} is empty"
	fi
}

# start_component <name> <binary> <args>...: runs it in its own session,
# detached from this shell, and records "<pid> <binary>".
start_component() {
	local name="$1" binary="$2"
	shift 2
	if [[ -n "$(component_pid "${name}")" ]]; then
		log "${name} already running (pid $(component_pid "${name}"))"
		return 0
	fi
	log "starting ${name} (log: ${LOG_DIR}/${name}.log)"
	# 9>&-: the component must not inherit (and so hold) the up/down lock.
	setsid "${binary}" "$@" </dev/null >>"${LOG_DIR}/${name}.log" 2>&1 9>&- &
	echo "$! ${binary}" >"$(pid_file "${name}")"
	# setsid execs the binary in the same process: wait for that, so that
	# component_pid recognises it from here on.
	local tries=0
	until [[ -n "$(component_pid "${name}")" ]] || ((++tries > 50)); do sleep 0.02; done
}

# wait_until <component> <what> <command>...: polls the command until it
# succeeds; fails with the component's log tail if it dies or times out.
wait_until() {
	local name="$1" what="$2" deadline
	shift 2
	deadline=$((SECONDS + START_TIMEOUT))
	until "$@" >/dev/null 2>&1; do
		if [[ -z "$(component_pid "${name}")" ]]; then
			log_tail "${name}"
			die "${name} exited while waiting for ${what}"
		fi
		if ((SECONDS >= deadline)); then
			log_tail "${name}"
			die "timed out after ${START_TIMEOUT}s waiting for ${what}"
		fi
		sleep 0.5
	done
	log "${what}: ok"
}

# stop_component <name>: SIGTERM to the component, then to anything it left
# behind in its process group (setsid made its pid the group id), and
# SIGKILL to the whole group after STOP_TIMEOUT.
stop_component() {
	local name="$1" pid deadline
	pid="$(component_pid "${name}")"
	if [[ -z "${pid}" ]]; then
		rm -f "$(pid_file "${name}")"
		return 0
	fi
	log "stopping ${name} (pid ${pid})"
	kill -TERM "${pid}" 2>/dev/null || true
	deadline=$((SECONDS + STOP_TIMEOUT))
	while kill -0 -- "-${pid}" 2>/dev/null; do
		if ((SECONDS >= deadline)); then
			log "${name} did not stop within ${STOP_TIMEOUT}s: sending SIGKILL"
			kill -KILL -- "-${pid}" 2>/dev/null || true
			deadline=$((SECONDS + 5))
			while kill -0 -- "-${pid}" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
			break
		fi
		if ! kill -0 "${pid}" 2>/dev/null; then
			kill -TERM -- "-${pid}" 2>/dev/null || true
		fi
		sleep 0.2
	done
	rm -f "$(pid_file "${name}")"
}

port_in_use() { ss -Hltn "sport = :$1" | grep -q .; }

# ---------------------------------------------------------------- settings

load_cluster_env() {
	[[ -f "${CLUSTER_ENV}" ]] || die "no cluster in ${STATE_DIR} (run '$0 up' first)"
	# shellcheck source=/dev/null
	source "${CLUSTER_ENV}"
	POD_IP_PREFIX="${POD_IP_PREFIX:-127.1}"
	PODSIM_NODES="${PODSIM_NODES:-1}"
	NODE_LANE="${NODE_LANE:-podsim}"
	lane_settings
}

# Settings that follow from the lane.
lane_settings() {
	if node_lane; then
		node_settings
		APISERVER_HOST="${NODE_IP}"
	else
		APISERVER_HOST=127.0.0.1
	fi
}

# Fixes ports and binaries for this cluster: from the existing state if the
# cluster was started before, else from the environment and the build.
prepare_cluster_env() {
	if [[ -f "${CLUSTER_ENV}" ]]; then
		load_cluster_env
	else
		ETCD_CLIENT_PORT="${BC_ETCD_CLIENT_PORT:-23790}"
		ETCD_PEER_PORT="${BC_ETCD_PEER_PORT:-23800}"
		APISERVER_PORT="${BC_APISERVER_PORT:-16443}"
		KCM_PORT="${BC_KCM_PORT:-16257}"
		POD_IP_PREFIX="${BC_PODSIM_IP_PREFIX:-127.1}"
		PODSIM_NODES="${BC_PODSIM_NODES:-1}"
		NODE_LANE="${BC_NODE:-podsim}"
		POD_NET="${BC_POD_NET:-10.244.0}"
		NODE_PORT_BASE="${BC_NODE_PORT_BASE:-10250}"
		KUBELET_NODE_NAME="${BC_NODE_NAME:-bc-node}"
		[[ "${NODE_LANE}" =~ ^(podsim|kubelet)$ ]] || die "BC_NODE must be podsim or kubelet, not '${NODE_LANE}'"
		[[ "${PODSIM_NODES}" =~ ^[1-9]$ ]] || die "BC_PODSIM_NODES must be 1 to 9, not '${PODSIM_NODES}'"
		[[ "${PODSIM_NODES}" == 1 || "${POD_IP_PREFIX}" =~ ^127\.[0-9]{1,3}$ ]] ||
			die "with BC_PODSIM_NODES > 1, BC_PODSIM_IP_PREFIX must be two octets like 127.1, not '${POD_IP_PREFIX}'"
		[[ "${POD_NET}" =~ ^10\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || die "BC_POD_NET must be the first three octets of a 10.x.y.0/24, not '${POD_NET}'"
		lane_settings
	fi
	if [[ -n "${BC_NODE:-}" && "${BC_NODE}" != "${NODE_LANE}" ]]; then
		die "the cluster in ${STATE_DIR} runs the ${NODE_LANE} lane, not BC_NODE=${BC_NODE}: 'down' it first"
	fi
	# Re-resolved on every start, so a rebuilt or removed cache is noticed.
	# shellcheck source=lib/control-plane-bins.sh
	source "${REPO_ROOT}/scripts/lib/control-plane-bins.sh"
	BC_NODE="${NODE_LANE}" bc_control_plane_bins || die "could not find or build the control-plane binaries"
	{
		printf 'ETCD_CLIENT_PORT=%q\nETCD_PEER_PORT=%q\n' "${ETCD_CLIENT_PORT}" "${ETCD_PEER_PORT}"
		printf 'APISERVER_PORT=%q\nKCM_PORT=%q\n' "${APISERVER_PORT}" "${KCM_PORT}"
		printf 'POD_IP_PREFIX=%q\nPODSIM_NODES=%q\n' "${POD_IP_PREFIX}" "${PODSIM_NODES}"
		printf 'BC_ETCD=%q\nBC_KUBE_APISERVER=%q\n' "${BC_ETCD}" "${BC_KUBE_APISERVER}"
		printf 'BC_KUBE_CONTROLLER_MANAGER=%q\nBC_KUBECTL=%q\n' "${BC_KUBE_CONTROLLER_MANAGER}" "${BC_KUBECTL}"
		printf 'NODE_LANE=%q\n' "${NODE_LANE}"
		if node_lane; then
			printf 'POD_NET=%q\nNODE_PORT_BASE=%q\nKUBELET_NODE_NAME=%q\n' "${POD_NET}" "${NODE_PORT_BASE}" "${KUBELET_NODE_NAME}"
			printf 'BC_KUBELET=%q\nBC_KUBE_SCHEDULER=%q\nBC_KUBE_PROXY=%q\n' "${BC_KUBELET}" "${BC_KUBE_SCHEDULER}" "${BC_KUBE_PROXY}"
		fi
	} >"${CLUSTER_ENV}"
}

kubectl_admin() { "${BC_KUBECTL}" --kubeconfig "${ADMIN_KUBECONFIG}" "$@"; }

# ---------------------------------------------------------------- pki

# issue_cert <name> <subject> [<subjectAltName>]: key + cert signed by the CA.
issue_cert() {
	local name="$1" subject="$2" san="${3:-}" ext
	[[ -f "${PKI_DIR}/${name}.crt" ]] && return 0
	ext="$(mktemp)"
	if [[ -n "${san}" ]]; then
		printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "${san}" >"${ext}"
	else
		printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >"${ext}"
	fi
	openssl genrsa -out "${PKI_DIR}/${name}.key" 2048 2>/dev/null
	openssl req -new -key "${PKI_DIR}/${name}.key" -subj "${subject}" -out "${PKI_DIR}/${name}.csr" 2>/dev/null
	openssl x509 -req -in "${PKI_DIR}/${name}.csr" -CA "${PKI_DIR}/ca.crt" -CAkey "${PKI_DIR}/ca.key" \
		-CAcreateserial -days 365 -extfile "${ext}" -out "${PKI_DIR}/${name}.crt" 2>/dev/null
	rm -f "${ext}" "${PKI_DIR}/${name}.csr"
}

ensure_pki() {
	command -v openssl >/dev/null || die "openssl is needed to create the certificates (apt-get install openssl)"
	mkdir -p "${PKI_DIR}"
	if [[ ! -f "${PKI_DIR}/ca.crt" ]]; then
		log "creating certificates in ${PKI_DIR}"
		openssl genrsa -out "${PKI_DIR}/ca.key" 2048 2>/dev/null
		openssl req -x509 -new -key "${PKI_DIR}/ca.key" -subj "/CN=bitcoin-controller-local-ca" \
			-days 3650 -out "${PKI_DIR}/ca.crt" 2>/dev/null
	fi
	local node_san=""
	if node_lane; then node_san="IP:${NODE_IP},"; fi
	issue_cert kube-apiserver "/CN=kube-apiserver" \
		"${node_san}IP:127.0.0.1,IP:${SERVICE_IP},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
	issue_cert kube-controller-manager-serving "/CN=kube-controller-manager" "IP:127.0.0.1,DNS:localhost"
	issue_cert admin "/O=system:masters/CN=admin"
	issue_cert kube-controller-manager "/CN=system:kube-controller-manager"
	if [[ ! -f "${PKI_DIR}/service-account.key" ]]; then
		openssl genrsa -out "${PKI_DIR}/service-account.key" 2048 2>/dev/null
		openssl rsa -in "${PKI_DIR}/service-account.key" -pubout -out "${PKI_DIR}/service-account.pub" 2>/dev/null
	fi
}

# write_kubeconfig <file> <user> <credential flags for set-credentials>...
write_kubeconfig() {
	local file="$1" user="$2"
	shift 2
	local kc=("${BC_KUBECTL}" --kubeconfig "${file}.tmp")
	rm -f "${file}.tmp"
	"${kc[@]}" config set-cluster local --server "https://${APISERVER_HOST}:${APISERVER_PORT}" \
		--certificate-authority "${PKI_DIR}/ca.crt" --embed-certs >/dev/null
	"${kc[@]}" config set-credentials "${user}" "$@" >/dev/null
	"${kc[@]}" config set-context local --cluster local --user "${user}" >/dev/null
	"${kc[@]}" config use-context local >/dev/null
	mv "${file}.tmp" "${file}"
}

# ---------------------------------------------------------------- components

component_ports() {
	case "$1" in
	etcd) echo "${ETCD_CLIENT_PORT} ${ETCD_PEER_PORT}" ;;
	kube-apiserver) echo "${APISERVER_PORT}" ;;
	kube-controller-manager) echo "${KCM_PORT}" ;;
	esac
}

# Fails before anything starts if a port of a component that is not
# running yet is taken.
check_ports_free() {
	local name port
	for name in etcd kube-apiserver kube-controller-manager; do
		[[ -z "$(component_pid "${name}")" ]] || continue
		for port in $(component_ports "${name}"); do
			if port_in_use "${port}"; then
				die "port ${port} for ${name} is taken by another process (see 'ss -ltnp'); use another BC_CLUSTER_DIR with other BC_*_PORT values"
			fi
		done
	done
}

start_etcd() {
	# --unsafe-no-fsync: the data is throw-away; fsync only slows tests down.
	start_component etcd "${BC_ETCD}" \
		--name local \
		--data-dir "${STATE_DIR}/etcd" \
		--listen-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORT}" \
		--advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORT}" \
		--listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
		--initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
		--initial-cluster "local=http://127.0.0.1:${ETCD_PEER_PORT}" \
		--unsafe-no-fsync
	wait_until etcd "etcd health" \
		curl -sf "http://127.0.0.1:${ETCD_CLIENT_PORT}/health"
}

# podsim lane: --endpoint-reconciler-type none: the `kubernetes` Service
# gets no endpoints, because 127.0.0.1 is not a valid endpoint address and
# nothing routes the service CIDR here anyway.
# kubelet lane: the API server listens on the node address (the bridge's),
# where pods reach it, and publishes it as the `kubernetes` endpoints, so
# kube-proxy routes 10.96.0.1:443 there; it talks to the kubelet with a
# client certificate (logs, exec); NodeRestriction limits the kubelet to its
# own Node and pods.
start_apiserver() {
	local lane_flags=(--endpoint-reconciler-type none)
	if node_lane; then
		lane_flags=(
			--endpoint-reconciler-type lease
			--enable-admission-plugins NodeRestriction
			--kubelet-client-certificate "${PKI_DIR}/kube-apiserver-kubelet-client.crt"
			--kubelet-client-key "${PKI_DIR}/kube-apiserver-kubelet-client.key"
			--kubelet-preferred-address-types InternalIP
		)
	fi
	start_component kube-apiserver "${BC_KUBE_APISERVER}" \
		--etcd-servers "http://127.0.0.1:${ETCD_CLIENT_PORT}" \
		--bind-address "${APISERVER_HOST}" \
		--advertise-address "${APISERVER_HOST}" \
		--secure-port "${APISERVER_PORT}" \
		--tls-cert-file "${PKI_DIR}/kube-apiserver.crt" \
		--tls-private-key-file "${PKI_DIR}/kube-apiserver.key" \
		--client-ca-file "${PKI_DIR}/ca.crt" \
		--authorization-mode Node,RBAC \
		--service-account-issuer https://kubernetes.default.svc.cluster.local \
		--service-account-key-file "${PKI_DIR}/service-account.pub" \
		--service-account-signing-key-file "${PKI_DIR}/service-account.key" \
		--service-cluster-ip-range "${SERVICE_CIDR}" \
		--allow-privileged=true \
		"${lane_flags[@]}" \
		--v=1
	wait_until kube-apiserver "kube-apiserver /readyz" apiserver_ready
}

start_controller_manager() {
	write_kubeconfig "${KCM_KUBECONFIG}" system:kube-controller-manager \
		--client-certificate "${PKI_DIR}/kube-controller-manager.crt" \
		--client-key "${PKI_DIR}/kube-controller-manager.key" --embed-certs
	start_component kube-controller-manager "${BC_KUBE_CONTROLLER_MANAGER}" \
		--kubeconfig "${KCM_KUBECONFIG}" \
		--authentication-kubeconfig "${KCM_KUBECONFIG}" \
		--authorization-kubeconfig "${KCM_KUBECONFIG}" \
		--bind-address 127.0.0.1 \
		--secure-port "${KCM_PORT}" \
		--tls-cert-file "${PKI_DIR}/kube-controller-manager-serving.crt" \
		--tls-private-key-file "${PKI_DIR}/kube-controller-manager-serving.key" \
		--controllers "${KCM_CONTROLLERS}$(if node_lane; then echo ",${KCM_NODE_CONTROLLERS}"; fi)" \
		--use-service-account-credentials \
		--service-account-private-key-file "${PKI_DIR}/service-account.key" \
		--root-ca-file "${PKI_DIR}/ca.crt" \
		--leader-elect=false \
		--v=1
	wait_until kube-controller-manager "kube-controller-manager /healthz" \
		curl -sf --cacert "${PKI_DIR}/ca.crt" "https://127.0.0.1:${KCM_PORT}/healthz"
}

require_manifests() {
	local f
	for f in crd.yaml rbac.yaml; do
		[[ -f "${REPO_ROOT}/manifests/${f}" ]] || die "manifests/${f} is missing in ${REPO_ROOT}: the cluster needs it"
	done
}

apply_manifests() {
	log "applying manifests/crd.yaml and manifests/rbac.yaml"
	kubectl_admin apply -f "${REPO_ROOT}/manifests/crd.yaml" -f "${REPO_ROOT}/manifests/rbac.yaml" >/dev/null
	kubectl_admin wait --for condition=Established --timeout "${START_TIMEOUT}s" \
		-f "${REPO_ROOT}/manifests/crd.yaml" >/dev/null
	log "CRD established"
}

# controller.kubeconfig authenticates as the controller's ServiceAccount with
# a bound token from the TokenRequest API. The token is never printed.
write_controller_kubeconfig() {
	local token
	token="$(kubectl_admin create token "${CONTROLLER_SA}" -n "${CONTROLLER_NAMESPACE}" --duration "${TOKEN_DURATION}")"
	write_kubeconfig "${CONTROLLER_KUBECONFIG}" "system:serviceaccount:${CONTROLLER_NAMESPACE}:${CONTROLLER_SA}" \
		--token "${token}"
	log "wrote ${CONTROLLER_KUBECONFIG} (ServiceAccount ${CONTROLLER_NAMESPACE}/${CONTROLLER_SA}, token valid ${TOKEN_DURATION})"
}

podsim_wanted() { ! node_lane && [[ "${BC_PODSIM:-1}" != 0 ]]; }

# The podsim processes, one per simulated Node: `podsim`, then `podsim-2`
# ... with BC_PODSIM_NODES > 1. Each is a component, its Node and its state
# dir of the same name. Pods go to whichever binds them first.
podsim_names() {
	local i
	echo "${NODE_NAME}"
	for ((i = 2; i <= ${PODSIM_NODES:-1}; i++)); do echo "${NODE_NAME}-${i}"; done
}

start_podsim() {
	local target_dir="${CARGO_TARGET_DIR:-${REPO_ROOT}/target}" name i=0 first second
	command -v cargo >/dev/null || die "cargo is needed to build podsim (or set BC_PODSIM=0)"
	log "building podsim (cargo build -p podsim)"
	(cd "${REPO_ROOT}" && cargo build -q -p podsim) || die "cargo build -p podsim failed"
	IFS=. read -r first second _ <<<"${POD_IP_PREFIX}"
	for name in $(podsim_names); do
		# The first Node hands out the prefix itself; with more, Node i
		# (from 0) hands out <first>.<second + i>.x.y, so ranges never overlap.
		local prefix="${POD_IP_PREFIX}"
		if ((PODSIM_NODES > 1)); then
			((second + i <= 255)) || die "BC_PODSIM_IP_PREFIX ${POD_IP_PREFIX} leaves no room for ${PODSIM_NODES} podsim nodes"
			prefix="${first}.$((second + i))"
		fi
		mkdir -p "${STATE_DIR}/${name}"
		start_component "${name}" "${target_dir}/debug/podsim" \
			--kubeconfig "${ADMIN_KUBECONFIG}" \
			--node-name "${name}" \
			--state-dir "${STATE_DIR}/${name}" \
			--ip-prefix "${prefix}"
		i=$((i + 1))
	done
	for name in $(podsim_names); do
		wait_until "${name}" "Node ${name} Ready" \
			kubectl_admin wait --for condition=Ready --timeout 1s "node/${name}"
	done
}

# ---------------------------------------------------------------- commands

components() {
	echo etcd kube-apiserver kube-controller-manager
	if podsim_wanted; then podsim_names; fi
	if node_lane; then echo "${NODE_COMPONENTS}"; fi
}

apiserver_ready() {
	curl -sf --cacert "${PKI_DIR}/ca.crt" --cert "${PKI_DIR}/admin.crt" --key "${PKI_DIR}/admin.key" \
		"https://${APISERVER_HOST}:${APISERVER_PORT}/readyz" >/dev/null 2>&1
}

# True when every wanted component runs and the API server is ready.
cluster_running() {
	local name
	[[ -f "${CLUSTER_ENV}" ]] || return 1
	load_cluster_env
	for name in $(components); do
		[[ -n "$(component_pid "${name}")" ]] || return 1
	done
	apiserver_ready
}

refresh_controller_token_if_old() {
	if [[ -n "$(find "${CONTROLLER_KUBECONFIG}" -mmin "+${TOKEN_REFRESH_AFTER_MIN}" 2>/dev/null)" ]]; then
		write_controller_kubeconfig
	fi
}

cmd_up() {
	local started=${SECONDS}
	if cluster_running; then
		refresh_controller_token_if_old
		log "already running (state: ${STATE_DIR})"
		return 0
	fi
	require_manifests
	umask 077
	mkdir -p "${LOG_DIR}" "${PID_DIR}"
	chmod 700 "${STATE_DIR}"
	prepare_cluster_env
	check_ports_free
	if node_lane; then node_up_network; fi
	ensure_pki
	if node_lane; then node_pki; fi
	write_kubeconfig "${ADMIN_KUBECONFIG}" admin \
		--client-certificate "${PKI_DIR}/admin.crt" --client-key "${PKI_DIR}/admin.key" --embed-certs
	start_etcd
	start_apiserver
	# The CRD before kube-controller-manager: the garbage collector discovers
	# resources at start and only every 30 s after, so a CRD applied later
	# would not cascade until that resync.
	apply_manifests
	start_controller_manager
	write_controller_kubeconfig
	if node_lane; then
		node_up_rest
	elif podsim_wanted; then
		start_podsim
	else
		log "BC_PODSIM=0: not starting podsim (pods will stay Pending)"
	fi
	log "cluster up (${NODE_LANE} lane) in $((SECONDS - started))s; use: eval \"\$($0 env)\""
}

cmd_down() {
	local keep=0 name port ports=() port_list=() left=()
	case "${1:-}" in
	--keep) keep=1 ;;
	"") ;;
	*) usage ;;
	esac
	if [[ -f "${CLUSTER_ENV}" ]]; then
		load_cluster_env
		if node_lane; then node_down; fi
		for name in $(podsim_names) kube-controller-manager kube-apiserver etcd; do
			if [[ -n "$(component_pid "${name}")" ]]; then
				read -r -a port_list <<<"$(component_ports "${name}")"
				ports+=("${port_list[@]}")
			fi
			stop_component "${name}"
		done
		if node_lane; then node_network_down; fi
		for port in "${ports[@]}"; do
			if port_in_use "${port}"; then left+=("${port}"); fi
		done
		((${#left[@]} == 0)) || die "still listening after stop on port(s) ${left[*]}: see 'ss -ltnp'"
		if ((${#ports[@]} > 0)); then
			log "stopped; no listener left on ports ${ports[*]}"
		else
			log "nothing was running"
		fi
	else
		log "no cluster state in ${STATE_DIR}: nothing to stop"
	fi
	if ((keep)); then
		log "kept ${STATE_DIR}"
	elif [[ -d "${STATE_DIR}" ]]; then
		rm -rf "${STATE_DIR}"
		log "removed ${STATE_DIR}"
	fi
}

cmd_restart_apiserver() {
	load_cluster_env
	[[ -n "$(component_pid kube-apiserver)" ]] || die "kube-apiserver is not running in ${STATE_DIR}"
	stop_component kube-apiserver
	start_apiserver
}

cmd_compact_etcd() {
	local url revision
	load_cluster_env
	url="http://127.0.0.1:${ETCD_CLIENT_PORT}/v3/kv"
	# The v3 JSON gateway: a range read's header carries the store revision.
	revision="$(curl -sf -X POST "${url}/range" -d '{"key":"AA==","limit":1}' |
		sed -n 's/.*"revision":"\([0-9]*\)".*/\1/p')"
	[[ -n "${revision}" ]] || die "could not read etcd's revision from ${url}/range"
	curl -sf -X POST "${url}/compaction" -d "{\"revision\":\"${revision}\",\"physical\":true}" >/dev/null ||
		die "etcd refused to compact at revision ${revision}"
	log "compacted etcd at revision ${revision}"
}

cmd_status() {
	local name pid all_up=0
	echo "state dir: ${STATE_DIR}"
	load_cluster_env
	echo "node lane: ${NODE_LANE}"
	for name in etcd kube-apiserver kube-controller-manager $(if node_lane; then echo "${NODE_COMPONENTS}"; else podsim_names; fi); do
		pid="$(component_pid "${name}")"
		if [[ -n "${pid}" ]]; then
			printf '%-24s running (pid %s)\n' "${name}" "${pid}"
		elif [[ -f "$(pid_file "${name}")" ]] || [[ "${name}" != "${NODE_NAME}"* ]]; then
			printf '%-24s not running\n' "${name}"
			all_up=1
		else
			printf '%-24s not started\n' "${name}"
		fi
	done
	echo "apiserver: https://${APISERVER_HOST}:${APISERVER_PORT}"
	if node_lane; then
		echo "node:      ${KUBELET_NODE_NAME} ${NODE_IP} (pods ${POD_SUBNET} on ${BRIDGE}); containerd unix://${CONTAINERD_SOCK}"
	fi
	if apiserver_ready; then
		echo "version:   $(kubectl_admin get --raw /version | sed -n 's/.*"gitVersion": "\(.*\)".*/\1/p')"
	else
		echo "version:   (API server not ready)"
		all_up=1
	fi
	return "${all_up}"
}

cmd_env() {
	load_cluster_env
	printf 'export BC_CLUSTER_DIR=%q\n' "${STATE_DIR}"
	printf 'export KUBECONFIG=%q\n' "${ADMIN_KUBECONFIG}"
	printf 'export BC_CONTROLLER_KUBECONFIG=%q\n' "${CONTROLLER_KUBECONFIG}"
	# shellcheck disable=SC2016 # $PATH is for the shell that evals this
	printf 'export PATH=%q:"$PATH"\n' "$(dirname "${BC_KUBECTL}")"
	printf 'export BC_NODE=%q\n' "${NODE_LANE}"
	if node_lane; then
		printf 'export BC_CONTAINERD_ADDRESS=%q\nexport BC_NODE_NAME=%q\nexport BC_NODE_IP=%q\n' \
			"${CONTAINERD_SOCK}" "${KUBELET_NODE_NAME}" "${NODE_IP}"
	fi
}

# shellcheck source=lib/node-lane.sh
source "${REPO_ROOT}/scripts/lib/node-lane.sh"

main() {
	local cmd="${1:-}"
	[[ $# -gt 0 ]] && shift
	case "${cmd}" in
	up | down | restart-apiserver)
		mkdir -p "$(dirname "${STATE_DIR}")"
		# One up/down at a time per state dir.
		exec 9>"${STATE_DIR}.lock"
		if ! flock -n 9; then
			# A `down` from an EXIT trap may run while the `up` it cleans up
			# after (or that up's build, which inherited the lock) is still
			# dying: wait for it rather than leave everything running.
			[[ "${cmd}" == down ]] || die "another up/down is running on ${STATE_DIR}"
			log "waiting up to 120 s for the running up/down on ${STATE_DIR} to end"
			flock -w 120 9 || die "another up/down is still running on ${STATE_DIR}"
		fi
		"cmd_${cmd//-/_}" "$@"
		;;
	compact-etcd) cmd_compact_etcd ;;
	status) cmd_status ;;
	env) cmd_env ;;
	*) usage ;;
	esac
}

main "$@"
