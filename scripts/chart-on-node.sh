#!/usr/bin/env bash
# The Helm chart on the real node (kubelet lane): replaces the controller
# that `local-cluster.sh up` applied from manifests/ with `helm install` of
# charts/bitcoin-controller (the locally built image), waits for both
# controller pods to be Ready, brings a test network to Ready with
# `kubectl wait`, then `helm uninstall` and checks that only the CRD is left.
#
# Run it against a running kubelet lane:
#   eval "$(scripts/local-cluster.sh env)"; scripts/chart-on-node.sh
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'chart-on-node: %s\n' "$*"; }
fail() {
	echo "chart-on-node: FAILED: $*" >&2
	exit 1
}

[[ "${BC_NODE:-}" == kubelet ]] || fail "needs the kubelet lane (BC_NODE=kubelet scripts/local-cluster.sh up; eval \"\$(scripts/local-cluster.sh env)\")"
# shellcheck source=lib/helm.sh
source scripts/lib/helm.sh
bc_helm_bin
helm() { "${BC_HELM}" "$@"; }

NS=bitcoin-controller
NETS=chart-net
NODE_IMAGE=bitcoin-regtest-node:dev

say "removing the controller installed from manifests/ (the chart brings its own)"
kubectl -n "${NS}" delete deployment,service -l app.kubernetes.io/name=bitcoin-controller --wait=true
kubectl -n "${NS}" delete role,rolebinding bitcoin-controller-leader-election --ignore-not-found
kubectl -n "${NS}" delete serviceaccount bitcoin-controller --ignore-not-found
kubectl delete clusterrolebinding bitcoin-controller --ignore-not-found
kubectl delete clusterrole bitcoin-controller bitcoin-controller-secrets --ignore-not-found
kubectl -n "${NS}" delete lease bitcoin-controller --ignore-not-found

kubectl create namespace "${NETS}"
start=${SECONDS}
say "helm install (image bitcoin-controller:latest, already on the node)"
helm install bitcoin-controller charts/bitcoin-controller --namespace "${NS}" \
	--set "rbac.secretNamespaces={${NETS}}" --wait --timeout 180s
kubectl -n "${NS}" rollout status deployment/bitcoin-controller --timeout=120s
kubectl -n "${NS}" get pods -o wide
ready=$(kubectl -n "${NS}" get pods -l app.kubernetes.io/name=bitcoin-controller \
	-o jsonpath='{range .items[*]}{.status.containerStatuses[0].ready}{"\n"}{end}' | grep -c true || true)
((ready == 2)) || fail "expected 2 Ready controller pods from the chart, got ${ready}"
say "2 controller pods Ready from the chart after $((SECONDS - start)) s"

kubectl apply -f - <<EOF
apiVersion: bitcoincontroller.christianb93.github.com/v1
kind: BitcoinNetwork
metadata:
  name: net
  namespace: ${NETS}
spec:
  nodes: 2
  image: ${NODE_IMAGE}
EOF
kubectl -n "${NETS}" wait --for=condition=Ready bitcoinnetwork/net --timeout=180s
kubectl -n "${NETS}" get bitcoinnetworks,pods -o wide
say "test network Ready under the chart's controller after $((SECONDS - start)) s"

kubectl delete namespace "${NETS}" --wait=true
helm uninstall bitcoin-controller --namespace "${NS}" --wait --timeout 120s
left=$(kubectl get clusterrole,clusterrolebinding -o name | grep -c bitcoin-controller || true)
((left == 0)) || fail "helm uninstall left ${left} cluster-wide RBAC objects"
left=$(kubectl -n "${NS}" get deployment,service,serviceaccount,role,rolebinding -o name | grep -c bitcoin-controller || true)
((left == 0)) || fail "helm uninstall left ${left} objects in ${NS}"
kubectl get crd bitcoinnetworks.bitcoincontroller.christianb93.github.com -o name
say "helm uninstall left only the CRD (crds/ is never deleted by Helm)"
