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
# The pod simulator runs no containers: for the chart's controller pods this
# script starts controller processes itself, with each pod's args, the
# chart's ServiceAccount token and the pod's address, so the pods turn Ready
# and a network reaches Ready under the chart's RBAC. The container image
# itself is never run here; that needs a real node.
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
cargo test --features install --test install -- --nocapture

step "local control plane (own state dir and ports)"
# The podsim lane, whatever the caller's shell says (a BC_NODE=kubelet left
# from a dev lane would start a real node on these ports).
export BC_NODE=podsim
export BC_PODSIM_NODES=1
export BC_CLUSTER_DIR="${BC_INSTALL_CLUSTER_DIR:-$PWD/.local/install-cluster}"
export BC_APISERVER_PORT="${BC_INSTALL_APISERVER_PORT:-28443}"
export BC_ETCD_CLIENT_PORT="${BC_INSTALL_ETCD_CLIENT_PORT:-28790}"
export BC_ETCD_PEER_PORT="${BC_INSTALL_ETCD_PEER_PORT:-28800}"
export BC_KCM_PORT="${BC_INSTALL_KCM_PORT:-28257}"
export BC_PODSIM_IP_PREFIX="${BC_INSTALL_PODSIM_IP_PREFIX:-127.5}"
# Controller processes this script starts (stand-ins for the chart's pods).
STANDINS=()
stop_standins() {
	local pid
	for pid in "${STANDINS[@]}"; do kill -TERM "${pid}" 2>/dev/null || true; done
	for pid in "${STANDINS[@]}"; do wait "${pid}" 2>/dev/null || true; done
	STANDINS=()
}
cleanup() {
	stop_standins
	if [[ "${BC_INSTALL_KEEP_CLUSTER:-0}" != 1 ]]; then
		scripts/local-cluster.sh down
	fi
}
trap cleanup EXIT
scripts/local-cluster.sh up
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

step "the chart's pods run: controller processes stand in for their containers"
# podsim runs no containers, so for each pod of the chart's Deployment a
# controller process runs with that pod's args, env and ServiceAccount token,
# bound to the pod's address: podsim's readiness probe (GET /readyz on the
# pod's health port) then sees it, and the controller works with exactly the
# RBAC the chart granted.
cargo build -q --bin bitcoin-controller
controller_bin="${CARGO_TARGET_DIR:-${PWD}/target}/debug/bitcoin-controller"
sa_kubeconfig="${BC_CLUSTER_DIR}/chart-sa.kubeconfig"
kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' |
	base64 -d >"${BC_CLUSTER_DIR}/chart-ca.crt"
kubectl --kubeconfig "${sa_kubeconfig}" config set-cluster local \
	--server "$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')" \
	--certificate-authority "${BC_CLUSTER_DIR}/chart-ca.crt" --embed-certs >/dev/null
kubectl --kubeconfig "${sa_kubeconfig}" config set-credentials chart-sa \
	--token "$(kubectl create token bitcoin-controller -n "${NS}" --duration 1h)" >/dev/null
kubectl --kubeconfig "${sa_kubeconfig}" config set-context local --cluster local --user chart-sa >/dev/null
kubectl --kubeconfig "${sa_kubeconfig}" config use-context local >/dev/null
mapfile -t chart_args < <(kubectl get deployment -n "${NS}" "${RELEASE}" \
	-o jsonpath='{range .spec.template.spec.containers[0].args[*]}{@}{"\n"}{end}')
rust_log="$(kubectl get deployment -n "${NS}" "${RELEASE}" \
	-o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="RUST_LOG")].value}')"
declare -A pod_ip=()
while read -r pod ip; do
	[[ -n "${ip}" ]] || fail "pod ${pod} has no IP"
	pod_ip[${pod}]="${ip}"
	args=()
	for arg in "${chart_args[@]}"; do
		case "${arg}" in
		--metrics-bind-address=:* | --health-probe-bind-address=:*) arg="${arg%%=*}=${ip}:${arg##*:}" ;;
		esac
		args+=("${arg}")
	done
	echo "${pod} (${ip}): bitcoin-controller ${args[*]}"
	POD_NAME="${pod}" POD_NAMESPACE="${NS}" RUST_LOG="${rust_log}" \
		"${controller_bin}" --kubeconfig "${sa_kubeconfig}" "${args[@]}" \
		>"${BC_CLUSTER_DIR}/logs/chart-${pod}.log" 2>&1 &
	STANDINS+=("$!")
done < <(kubectl get pods -n "${NS}" -l app.kubernetes.io/instance="${RELEASE}" \
	-o jsonpath='{range .items[*]}{.metadata.name} {.status.podIP}{"\n"}{end}')
kubectl -n "${NS}" rollout status "deployment/${RELEASE}" --timeout=120s
kubectl -n "${NS}" get deployment,pods -l app.kubernetes.io/instance="${RELEASE}"

# wait_jsonpath <what> <want> <timeout s> <kubectl get args>...
wait_jsonpath() {
	local what="$1" want="$2" deadline=$((SECONDS + $3)) got=""
	shift 3
	until got="$(kubectl get "$@" 2>/dev/null)" && [[ "${got}" == "${want}" ]]; do
		((SECONDS < deadline)) || fail "${what}: '${got}', expected '${want}'"
		sleep 1
	done
	echo "${what}: ${got}"
}

holder="$(kubectl get lease -n "${NS}" bitcoin-controller -o jsonpath='{.spec.holderIdentity}')"
echo "Lease bitcoin-controller held by ${holder}"
kubectl -n nets create -f - <<'EOF'
apiVersion: bitcoincontroller.christianb93.github.com/v1
kind: BitcoinNetwork
metadata:
  name: chart-net
spec:
  nodes: 3
EOF
kubectl -n other create -f - <<'EOF'
apiVersion: bitcoincontroller.christianb93.github.com/v1
kind: BitcoinNetwork
metadata:
  name: no-secrets
spec:
  nodes: 1
EOF
wait_jsonpath "nets/chart-net Ready" True 180 -n nets bitcoinnetwork/chart-net \
	-o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'
wait_jsonpath "other/no-secrets Degraded reason (no Secrets RoleBinding there)" SecretAccessDenied 60 \
	-n other bitcoinnetwork/no-secrets -o jsonpath='{.status.conditions[?(@.type=="Degraded")].reason}'
kubectl get bcn -A

step "the dashboard's metrics against the leader's /metrics"
leader_ip=""
for pod in "${!pod_ip[@]}"; do
	[[ "${holder}" == "${pod}"* ]] && leader_ip="${pod_ip[${pod}]}"
done
[[ -n "${leader_ip}" ]] || fail "no chart pod holds the Lease (holder '${holder}')"
metrics_port="$(printf '%s\n' "${chart_args[@]}" | sed -n 's/^--metrics-bind-address=:\([0-9]*\)$/\1/p')"
curl -sf "http://${leader_ip}:${metrics_port}/metrics" >"${BC_CLUSTER_DIR}/scraped-metrics.txt" ||
	fail "could not scrape http://${leader_ip}:${metrics_port}/metrics"
BC_SCRAPED_METRICS="${BC_CLUSTER_DIR}/scraped-metrics.txt" \
	cargo test --features install --test dashboard -- --nocapture dashboard_queries_only_scraped_metrics

kubectl delete bitcoinnetwork -n nets chart-net --wait=true
kubectl delete bitcoinnetwork -n other no-secrets --wait=true
stop_standins

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
