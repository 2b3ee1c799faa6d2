#!/usr/bin/env bash
# Finds or builds the local control-plane binaries: etcd, kube-apiserver,
# kube-controller-manager and kubectl; with BC_NODE=kubelet also the node's
# kubelet, kube-scheduler and kube-proxy (same Kubernetes module, same
# version, built in the same `go build` when several are missing).
#
# Source it and call `bc_control_plane_bins`, which sets BC_ETCD,
# BC_KUBE_APISERVER, BC_KUBE_CONTROLLER_MANAGER and BC_KUBECTL (and
# BC_KUBELET, BC_KUBE_SCHEDULER, BC_KUBE_PROXY) to absolute paths; or
# execute it, which does the same and prints them as NAME=path lines.
#
# For each binary, in this order:
#   1. $KUBEBUILDER_ASSETS/<name>, if it has the wanted version;
#   2. <name> on PATH, if it has the wanted version;
#   3. the build cache (see below), built there if missing.
# Kubernetes binaries must be exactly KUBE_VERSION; etcd must be 3.5.x or
# 3.6.x (kube-apiserver 1.36 does not work with etcd 3.4).
#
# Builds go to ${XDG_CACHE_HOME:-~/.cache}/bitcoin-controller/k8s-<version>/bin
# and .../etcd-<version>/bin, from the wrapper modules hack/k8s and hack/etcd.
# Set BC_FORCE_BUILD=1 to ignore binaries outside the cache.

KUBE_VERSION=v1.36.3
ETCD_VERSION=v3.6.8

_bc_lib_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_bc_repo_root="$(cd "${_bc_lib_dir}/../.." && pwd)"
BC_CACHE_ROOT="${XDG_CACHE_HOME:-${HOME}/.cache}/bitcoin-controller"

_bc_log() { echo "control-plane-bins: $*" >&2; }

# Prints the version a binary reports, or nothing.
_bc_version_of() {
	local name="$1" path="$2"
	case "${name}" in
	etcd)
		"${path}" --version 2>/dev/null | sed -n 's/^etcd Version: /v/p'
		;;
	kubectl)
		"${path}" version --client 2>/dev/null | sed -n 's/^Client Version: //p'
		;;
	*)
		"${path}" --version 2>/dev/null | sed -n 's/^Kubernetes //p'
		;;
	esac
}

_bc_version_ok() {
	local name="$1" version="$2"
	case "${name}" in
	etcd) [[ "${version}" =~ ^v3\.(5|6)\.[0-9]+$ ]] ;;
	*) [[ "${version}" == "${KUBE_VERSION}" ]] ;;
	esac
}

_bc_cache_bin_dir() {
	case "$1" in
	etcd) echo "${BC_CACHE_ROOT}/etcd-${ETCD_VERSION}/bin" ;;
	*) echo "${BC_CACHE_ROOT}/k8s-${KUBE_VERSION}/bin" ;;
	esac
}

# Prints the path of a usable prebuilt binary, or nothing. Binaries of the
# build cache (on PATH after `local-cluster.sh env`) do not count here.
_bc_find_prebuilt() {
	local name="$1" candidate version
	[[ "${BC_FORCE_BUILD:-0}" == 1 ]] && return 0
	for candidate in ${KUBEBUILDER_ASSETS:+"${KUBEBUILDER_ASSETS}/${name}"} "$(command -v "${name}" || true)"; do
		[[ -n "${candidate}" && -x "${candidate}" ]] || continue
		[[ "${candidate}" == "${BC_CACHE_ROOT}"/* ]] && continue
		version="$(_bc_version_of "${name}" "${candidate}")"
		if _bc_version_ok "${name}" "${version}"; then
			echo "${candidate}"
			return 0
		fi
		_bc_log "ignoring ${candidate}: version '${version:-unknown}' is not the one wanted"
	done
}

# _bc_require_go <module dir> <what>
# Sets BC_GO to a Go toolchain at least as new as the module's go.mod asks.
_bc_require_go() {
	local module_dir="$1" what="$2" go_bin want have
	go_bin="$(command -v go || true)"
	[[ -z "${go_bin}" && -x /usr/local/go/bin/go ]] && go_bin=/usr/local/go/bin/go
	if [[ -z "${go_bin}" ]]; then
		_bc_log "error: no Go toolchain found (need go on PATH or in /usr/local/go/bin) to build ${what}"
		return 1
	fi
	want="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "${module_dir}/go.mod")"
	have="$("${go_bin}" env GOVERSION)"
	have="${have#go}"
	if [[ "$(printf '%s\n%s\n' "${want}" "${have}" | sort -V | head -n1)" != "${want}" ]]; then
		_bc_log "error: ${go_bin} is go ${have}; building ${what} needs go >= ${want}"
		return 1
	fi
	BC_GO="${go_bin}"
}

# _bc_go_build <what> <module dir> <output dir> <ldflags> <package>...
# Builds into a temporary directory next to the output and moves the
# binaries in only when the whole build succeeded.
_bc_go_build() {
	local what="$1" module_dir="$2" out_dir="$3" ldflags="$4"
	shift 4
	local tmp_dir status=0 started=${SECONDS}
	mkdir -p "${out_dir}"
	tmp_dir="$(mktemp -d "${out_dir}/.build.XXXXXX")"
	_bc_log "building ${what} from ${module_dir#"${_bc_repo_root}"/} into ${out_dir}; this takes minutes on a small machine"
	(
		cd "${module_dir}" &&
			CGO_ENABLED=0 GOFLAGS="-trimpath ${GOFLAGS:-}" GOTOOLCHAIN=local \
				nice -n 10 "${BC_GO}" build -ldflags "${ldflags}" -o "${tmp_dir}/" "$@"
	) || status=$?
	if [[ "${status}" -eq 0 ]]; then
		mv "${tmp_dir}"/* "${out_dir}/"
		_bc_log "built ${what} in $((SECONDS - started))s"
	else
		_bc_log "error: go build of ${what} failed (exit ${status}); see the compiler output above"
	fi
	rm -rf "${tmp_dir}"
	return "${status}"
}

_bc_kube_ldflags() {
	local minor pkg flags="-s -w"
	minor="${KUBE_VERSION#v1.}"
	minor="${minor%%.*}"
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		flags+=" -X ${pkg}.gitVersion=${KUBE_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
		flags+=" -X ${pkg}.gitTreeState=clean"
	done
	echo "${flags}"
}

# The binaries wanted: the control plane, plus the node's with BC_NODE=kubelet.
_bc_wanted_bins() {
	echo etcd kube-apiserver kube-controller-manager kubectl
	if [[ "${BC_NODE:-podsim}" == kubelet ]]; then echo kubelet kube-scheduler kube-proxy; fi
}

bc_control_plane_bins() {
	local name path kube_missing=() kube_dir etcd_dir wanted
	declare -A found=()
	kube_dir="$(_bc_cache_bin_dir kube-apiserver)"
	etcd_dir="$(_bc_cache_bin_dir etcd)"
	wanted="$(_bc_wanted_bins)"

	for name in ${wanted}; do
		path="$(_bc_find_prebuilt "${name}")"
		if [[ -z "${path}" ]]; then
			path="$(_bc_cache_bin_dir "${name}")/${name}"
			if [[ -x "${path}" ]]; then
				_bc_log "${name}: cached ${path}"
			else
				path=""
			fi
		else
			_bc_log "${name}: prebuilt ${path}"
		fi
		found[${name}]="${path}"
		[[ -z "${path}" && "${name}" != etcd ]] && kube_missing+=("k8s.io/kubernetes/cmd/${name}")
	done

	if [[ -z "${found[etcd]}" || ${#kube_missing[@]} -gt 0 ]]; then
		_bc_require_go "${_bc_repo_root}/hack/k8s" "the control plane (Kubernetes ${KUBE_VERSION}, etcd ${ETCD_VERSION})" || return 1
	fi
	if [[ ${#kube_missing[@]} -gt 0 ]]; then
		_bc_go_build "${kube_missing[*]##*/} ${KUBE_VERSION}" "${_bc_repo_root}/hack/k8s" "${kube_dir}" \
			"$(_bc_kube_ldflags)" "${kube_missing[@]}" || return 1
		for name in ${wanted}; do
			[[ "${name}" != etcd && -z "${found[${name}]}" ]] && found[${name}]="${kube_dir}/${name}"
		done
	fi
	if [[ -z "${found[etcd]}" ]]; then
		_bc_go_build "etcd ${ETCD_VERSION}" "${_bc_repo_root}/hack/etcd" "${etcd_dir}" "-s -w" . || return 1
		found[etcd]="${etcd_dir}/etcd"
	fi

	for name in ${wanted}; do
		path="${found[${name}]}"
		if ! _bc_version_ok "${name}" "$(_bc_version_of "${name}" "${path}")"; then
			_bc_log "error: ${path} does not report the wanted version"
			return 1
		fi
	done
	BC_ETCD="${found[etcd]}"
	BC_KUBE_APISERVER="${found[kube-apiserver]}"
	BC_KUBE_CONTROLLER_MANAGER="${found[kube-controller-manager]}"
	BC_KUBECTL="${found[kubectl]}"
	BC_KUBELET="${found[kubelet]:-}"
	BC_KUBE_SCHEDULER="${found[kube-scheduler]:-}"
	BC_KUBE_PROXY="${found[kube-proxy]:-}"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
	set -euo pipefail
	bc_control_plane_bins
	printf 'BC_ETCD=%s\nBC_KUBE_APISERVER=%s\nBC_KUBE_CONTROLLER_MANAGER=%s\nBC_KUBECTL=%s\n' \
		"${BC_ETCD}" "${BC_KUBE_APISERVER}" "${BC_KUBE_CONTROLLER_MANAGER}" "${BC_KUBECTL}"
	if [[ -n "${BC_KUBELET}" ]]; then
		printf 'BC_KUBELET=%s\nBC_KUBE_SCHEDULER=%s\nBC_KUBE_PROXY=%s\n' "${BC_KUBELET}" "${BC_KUBE_SCHEDULER}" "${BC_KUBE_PROXY}"
	fi
fi
