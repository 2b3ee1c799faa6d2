#!/usr/bin/env bash
# Finds or builds helm for the chart checks (scripts/install-test.sh).
#
# Source it and call `bc_helm_bin`, which sets BC_HELM to an absolute path;
# or execute it, which does the same and prints BC_HELM=path.
#
# In this order:
#   1. helm on PATH, if it is exactly HELM_VERSION;
#   2. the build cache, built there if missing:
#      ${XDG_CACHE_HOME:-~/.cache}/bitcoin-controller/helm-<version>/bin/helm,
#      from the wrapper module hack/helm (helm.sh/helm/v3/cmd/helm through
#      the Go module proxy), like scripts/lib/control-plane-bins.sh builds
#      the Kubernetes binaries.
# Set BC_FORCE_BUILD=1 to ignore a helm outside the cache.

HELM_VERSION=v3.21.4

_bc_helm_lib_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_bc_helm_repo_root="$(cd "${_bc_helm_lib_dir}/../.." && pwd)"
_bc_helm_cache_root="${XDG_CACHE_HOME:-${HOME}/.cache}/bitcoin-controller"

_bc_helm_log() { echo "helm-bin: $*" >&2; }

# Prints the version a helm binary reports (e.g. v3.21.4), or nothing.
_bc_helm_version_of() {
	"$1" version --template '{{.Version}}' 2>/dev/null || true
}

_bc_helm_go() {
	local go_bin want have
	go_bin="$(command -v go || true)"
	[[ -z "${go_bin}" && -x /usr/local/go/bin/go ]] && go_bin=/usr/local/go/bin/go
	if [[ -z "${go_bin}" ]]; then
		_bc_helm_log "error: no Go toolchain found (need go on PATH or in /usr/local/go/bin) to build helm ${HELM_VERSION}"
		return 1
	fi
	want="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "${_bc_helm_repo_root}/hack/helm/go.mod")"
	have="$("${go_bin}" env GOVERSION)"
	have="${have#go}"
	if [[ "$(printf '%s\n%s\n' "${want}" "${have}" | sort -V | head -n1)" != "${want}" ]]; then
		_bc_helm_log "error: ${go_bin} is go ${have}; building helm ${HELM_VERSION} needs go >= ${want}"
		return 1
	fi
	echo "${go_bin}"
}

# ldflags as helm's Makefile sets them: the version `helm version` reports and
# the Kubernetes version helm lint / helm template assume without a cluster.
_bc_helm_ldflags() {
	local k8s minor
	k8s="$(sed -n 's/^[[:space:]]*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "${_bc_helm_repo_root}/hack/helm/go.mod")"
	minor="${k8s:-36}"
	printf '%s' "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
		" -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
		" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${minor}" \
		" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${minor}"
}

bc_helm_bin() {
	local candidate version go_bin out_dir tmp_dir status=0 started
	out_dir="${_bc_helm_cache_root}/helm-${HELM_VERSION}/bin"
	if [[ "${BC_FORCE_BUILD:-0}" != 1 ]]; then
		candidate="$(command -v helm || true)"
		if [[ -n "${candidate}" && "${candidate}" != "${out_dir}/helm" ]]; then
			version="$(_bc_helm_version_of "${candidate}")"
			if [[ "${version}" == "${HELM_VERSION}" ]]; then
				_bc_helm_log "helm: prebuilt ${candidate}"
				BC_HELM="${candidate}"
				return 0
			fi
			_bc_helm_log "ignoring ${candidate}: version '${version:-unknown}' is not ${HELM_VERSION}"
		fi
	fi
	if [[ -x "${out_dir}/helm" ]]; then
		_bc_helm_log "helm: cached ${out_dir}/helm"
	else
		go_bin="$(_bc_helm_go)" || return 1
		mkdir -p "${out_dir}"
		tmp_dir="$(mktemp -d "${out_dir}/.build.XXXXXX")"
		_bc_helm_log "building helm ${HELM_VERSION} from hack/helm into ${out_dir}; this takes minutes on a small machine"
		started=${SECONDS}
		(
			cd "${_bc_helm_repo_root}/hack/helm" &&
				CGO_ENABLED=0 GOFLAGS="-trimpath ${GOFLAGS:-}" GOTOOLCHAIN=local \
					nice -n 10 "${go_bin}" build -ldflags "$(_bc_helm_ldflags)" -o "${tmp_dir}/" helm.sh/helm/v3/cmd/helm
		) || status=$?
		if [[ "${status}" -eq 0 ]]; then
			mv "${tmp_dir}/helm" "${out_dir}/helm"
			_bc_helm_log "built helm ${HELM_VERSION} in $((SECONDS - started))s"
		else
			_bc_helm_log "error: go build of helm failed (exit ${status}); see the compiler output above"
		fi
		rm -rf "${tmp_dir}"
		[[ "${status}" -eq 0 ]] || return "${status}"
	fi
	version="$(_bc_helm_version_of "${out_dir}/helm")"
	if [[ "${version}" != "${HELM_VERSION}" ]]; then
		_bc_helm_log "error: ${out_dir}/helm reports '${version:-nothing}', not ${HELM_VERSION}"
		return 1
	fi
	BC_HELM="${out_dir}/helm"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
	set -euo pipefail
	bc_helm_bin
	printf 'BC_HELM=%s\n' "${BC_HELM}"
fi
