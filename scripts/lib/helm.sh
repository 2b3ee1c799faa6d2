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
#      the Go module proxy) with scripts/lib/control-plane-bins.sh's build
#      step, as the Kubernetes binaries are built.
# Set BC_FORCE_BUILD=1 to ignore a helm outside the cache.

HELM_VERSION=v3.21.4

_bc_helm_lib_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_bc_helm_repo_root="$(cd "${_bc_helm_lib_dir}/../.." && pwd)"
_bc_helm_cache_root="${XDG_CACHE_HOME:-${HOME}/.cache}/bitcoin-controller"

_bc_helm_log() { echo "helm-bin: $*" >&2; }

# The Go toolchain check and build step the control plane's binaries use.
# shellcheck source=scripts/lib/control-plane-bins.sh
source "${_bc_helm_lib_dir}/control-plane-bins.sh"

# Prints the version a helm binary reports (e.g. v3.21.4), or nothing.
_bc_helm_version_of() {
	"$1" version --template '{{.Version}}' 2>/dev/null || true
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
	local candidate version out_dir
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
		_bc_require_go "${_bc_helm_repo_root}/hack/helm" "helm ${HELM_VERSION}" || return 1
		_bc_go_build "helm ${HELM_VERSION}" "${_bc_helm_repo_root}/hack/helm" "${out_dir}" \
			"$(_bc_helm_ldflags)" helm.sh/helm/v3/cmd/helm || return 1
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
