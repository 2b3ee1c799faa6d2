#!/usr/bin/env bash
# Checks the install paths (README "Installation"):
#   - helm lint and helm template of charts/bitcoin-controller (default,
#     single-namespace and ServiceMonitor values);
#   - tests/install.rs: the chart's default render equals
#     `kubectl kustomize manifests/` in effect, single-namespace mode, values;
#   - on a local control plane of its own (state dir and ports apart from
#     scripts/test.sh's): `kubectl apply -k manifests/ --dry-run=server`,
#     then, from a cluster without the controller's objects,
#     `helm install` (objects created, RBAC in effect for the ServiceAccount,
#     pods created) and `helm uninstall` (nothing left but the CRD), in
#     cluster-wide and in single-namespace mode.
# helm is built from the Go module proxy on first use (scripts/lib/helm.sh).
#
# The pod simulator runs no containers, so the controller pods of the chart
# are created but never Ready here; that needs a real node.
#
# BC_INSTALL_KEEP_CLUSTER=1 leaves the control plane running afterwards.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
fail() {
	echo "install-test: FAILED: $*" >&2
	exit 1
}

CHART=charts/bitcoin-controller
RELEASE=bitcoin-controller
NS=bitcoin-controller
SA="system:serviceaccount:${NS}:bitcoin-controller"
CRD=bitcoinnetworks.bitcoincontroller.christianb93.github.com

step "helm and kubectl"
# shellcheck source=lib/helm.sh
source scripts/lib/helm.sh
bc_helm_bin
# shellcheck source=lib/control-plane-bins.sh
source scripts/lib/control-plane-bins.sh
bc_control_plane_bins
export BC_HELM BC_KUBECTL
helm() { "${BC_HELM}" "$@"; }
kubectl() { "${BC_KUBECTL}" "$@"; }
helm version --short

step "helm lint"
helm lint --strict "${CHART}"
helm lint --strict "${CHART}" --set watchNamespace=nets
helm lint --strict "${CHART}" --set serviceMonitor.enabled=true --set 'rbac.secretNamespaces={a,b}'

# Prints "Kind name" of each object of a YAML stream.
kinds_and_names() { awk '/^kind:/ { k = $2 } /^metadata:/ { m = 1; next } m && /^  name:/ { print k, $2; m = 0 }' | sort; }

step "helm template (default values)"
helm template "${RELEASE}" "${CHART}" --namespace "${NS}" --include-crds | kinds_and_names

step "kubectl kustomize manifests/"
kubectl kustomize manifests/ | kinds_and_names

step "chart vs manifests/ (tests/install.rs)"
cargo test --test install -- --include-ignored --nocapture

step "local control plane (own state dir and ports)"
export BC_CLUSTER_DIR="${BC_INSTALL_CLUSTER_DIR:-$PWD/.local/install-cluster}"
export BC_APISERVER_PORT="${BC_INSTALL_APISERVER_PORT:-28443}"
export BC_ETCD_CLIENT_PORT="${BC_INSTALL_ETCD_CLIENT_PORT:-28790}"
export BC_ETCD_PEER_PORT="${BC_INSTALL_ETCD_PEER_PORT:-28800}"
export BC_KCM_PORT="${BC_INSTALL_KCM_PORT:-28257}"
export BC_PODSIM_IP_PREFIX="${BC_INSTALL_PODSIM_IP_PREFIX:-127.5}"
scripts/local-cluster.sh up
if [[ "${BC_INSTALL_KEEP_CLUSTER:-0}" != 1 ]]; then
	trap 'scripts/local-cluster.sh down' EXIT
fi
eval "$(scripts/local-cluster.sh env)"

step "kustomize: the image is set through images: (an overlay)"
overlay="$(mktemp -d "${PWD}/.local/kustomize-overlay.XXXXXX")"
cat >"${overlay}/kustomization.yaml" <<EOF
resources:
  - ../../manifests
images:
  - name: bitcoin-controller
    newName: registry.example/bitcoin-controller
    newTag: v1.2.3
EOF
image="$(kubectl kustomize "${overlay}" | sed -n 's/^ *image: //p')"
rm -rf "${overlay}"
echo "image: ${image}"
[[ "${image}" == registry.example/bitcoin-controller:v1.2.3 ]] || fail "images: did not set the image"

step "kubectl apply -k manifests/ --dry-run=server, then for real"
# The state local-cluster.sh leaves (CRD, Namespace, RBAC), also on a rerun.
kubectl apply -f manifests/crd.yaml -f manifests/rbac.yaml >/dev/null
kubectl wait --for condition=Established --timeout=60s "crd/${CRD}" >/dev/null
kubectl apply -k manifests/ --dry-run=server
kubectl apply -k manifests/
kubectl get deployment,service -n "${NS}" -l app.kubernetes.io/name=bitcoin-controller

step "a cluster without the controller: kubectl delete -k manifests/"
kubectl delete -k manifests/ --ignore-not-found --wait=true
kubectl delete namespace nets other bc-ops --ignore-not-found --wait=true
kubectl wait --for=delete "namespace/${NS}" --timeout=120s 2>/dev/null || true
if kubectl get namespace "${NS}" >/dev/null 2>&1 || kubectl get crd "${CRD}" >/dev/null 2>&1; then
	fail "namespace ${NS} or the CRD is still there"
fi

# expect_can <yes|no> <kubectl auth can-i args>...: the controller's
# ServiceAccount may (or may not) do it.
expect_can() {
	local want="$1" got
	shift
	got="$(kubectl auth can-i --as "${SA}" "$@" 2>/dev/null || true)"
	printf '  can-i %-60s %s\n' "$*" "${got}"
	[[ "${got}" == "${want}" ]] || fail "ServiceAccount: can-i $* is '${got}', expected '${want}'"
}

# What exists with the release's label (cluster-wide and namespaced kinds).
release_objects() {
	kubectl get clusterroles,clusterrolebindings,roles,rolebindings,serviceaccounts,deployments,replicasets,pods,services \
		--all-namespaces -l "app.kubernetes.io/instance=$1" -o name
}

# expect_gone <release>: nothing of it is left within 60 s (the garbage
# collector removes ReplicaSets and pods after the Deployment).
expect_gone() {
	local left deadline=$((SECONDS + 60))
	until left="$(release_objects "$1")" && [[ -z "${left}" ]]; do
		((SECONDS < deadline)) || fail "left after helm uninstall of $1: ${left}"
		sleep 1
	done
}

step "helm install (cluster-wide, Secrets bound in namespace nets)"
kubectl create namespace nets
kubectl create namespace other
helm install "${RELEASE}" "${CHART}" --namespace "${NS}" --create-namespace \
	--set 'rbac.secretNamespaces={nets}'
helm list --namespace "${NS}"
kubectl wait --for condition=Established --timeout=60s "crd/${CRD}"
kubectl get crd "${CRD}"
kubectl get clusterroles,clusterrolebindings -l "app.kubernetes.io/instance=${RELEASE}"
kubectl get serviceaccounts,roles,rolebindings,deployments,services -n "${NS}" -l "app.kubernetes.io/instance=${RELEASE}"
kubectl get rolebindings -n nets
echo "RBAC in effect for ${SA}:"
expect_can yes list bitcoinnetworks.bitcoincontroller.christianb93.github.com --all-namespaces
expect_can yes update bitcoinnetworks.bitcoincontroller.christianb93.github.com --subresource=status -n other
expect_can no update bitcoinnetworks.bitcoincontroller.christianb93.github.com -n other
expect_can yes create statefulsets.apps -n other
expect_can no delete statefulsets.apps -n other
expect_can yes watch pods --all-namespaces
expect_can no create pods -n other
expect_can yes create events -n other
expect_can yes get secrets -n nets
expect_can yes create secrets -n nets
expect_can no delete secrets -n nets
expect_can no get secrets -n other
expect_can no list secrets --all-namespaces
expect_can yes create leases.coordination.k8s.io -n "${NS}"
expect_can yes update leases.coordination.k8s.io/bitcoin-controller -n "${NS}"
expect_can no update leases.coordination.k8s.io/someone-else -n "${NS}"
expect_can no create leases.coordination.k8s.io -n other
echo "the Deployment's pods (created and bound; no container runs them here):"
deadline=$((SECONDS + 90))
until [[ "$(kubectl get pods -n "${NS}" -l app.kubernetes.io/instance="${RELEASE}" -o name | wc -l)" -eq 2 ]]; do
	((SECONDS < deadline)) || fail "the Deployment's 2 pods were not created"
	sleep 1
done
kubectl get pods -n "${NS}" -l app.kubernetes.io/instance="${RELEASE}" -o wide

step "helm uninstall (cluster-wide): only the CRD is left"
helm uninstall "${RELEASE}" --namespace "${NS}" --wait --timeout 120s
expect_gone "${RELEASE}"
[[ -z "$(kubectl get rolebindings -n nets -o name)" ]] || fail "a RoleBinding is left in nets"
kubectl get crd "${CRD}" >/dev/null || fail "helm uninstall removed the CRD (it must keep it: crds/)"
echo "left of release ${RELEASE}: the CRD ${CRD} (and namespace ${NS}, which helm install --create-namespace created and Helm never deletes)"
[[ -z "$(helm list --all-namespaces -q)" ]] || fail "helm still lists a release"

step "helm install (single namespace: watchNamespace=nets)"
helm install bc-nets "${CHART}" --namespace bc-ops --create-namespace --set watchNamespace=nets
SA="system:serviceaccount:bc-ops:bc-nets-bitcoin-controller"
kubectl get roles,rolebindings -n nets -l app.kubernetes.io/instance=bc-nets
[[ -z "$(kubectl get clusterroles,clusterrolebindings -l app.kubernetes.io/instance=bc-nets -o name)" ]] ||
	fail "single-namespace mode created cluster-wide RBAC"
kubectl get deployment -n bc-ops bc-nets-bitcoin-controller -o jsonpath='{.spec.template.spec.containers[0].args}{"\n"}'
echo "RBAC in effect for ${SA}:"
expect_can yes list bitcoinnetworks.bitcoincontroller.christianb93.github.com -n nets
expect_can no list bitcoinnetworks.bitcoincontroller.christianb93.github.com -n other
expect_can no list bitcoinnetworks.bitcoincontroller.christianb93.github.com --all-namespaces
expect_can yes create statefulsets.apps -n nets
expect_can no create statefulsets.apps -n other
expect_can yes get secrets -n nets
expect_can no get secrets -n other
expect_can no get secrets -n bc-ops
expect_can yes update leases.coordination.k8s.io/bc-nets-bitcoin-controller -n bc-ops

step "helm uninstall (single namespace): only the CRD is left"
helm uninstall bc-nets --namespace bc-ops --wait --timeout 120s
expect_gone bc-nets
kubectl get crd "${CRD}" >/dev/null || fail "helm uninstall removed the CRD"
kubectl delete namespace "${NS}" bc-ops nets other --wait=false >/dev/null

echo
echo "install-test: OK"
