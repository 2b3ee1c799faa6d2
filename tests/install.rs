//! The install paths agree: the Helm chart's default install renders the
//! objects `kubectl apply -k manifests/` applies (names, kinds, RBAC rules,
//! container args, everything but labels and selectors), its CRD is
//! manifests/crd.yaml, and its single-namespace mode binds Roles in one
//! namespace only.
//!
//! The tests need `helm` and `kubectl` (`$BC_HELM` / `$BC_KUBECTL`, else on
//! `PATH`), so they build only with `--features install`;
//! `scripts/install-test.sh` builds helm and runs them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

const RELEASE: &str = "bitcoin-controller";
const NAMESPACE: &str = "bitcoin-controller";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tool(env: &str, default: &str) -> String {
    std::env::var(env).unwrap_or_else(|_| default.to_owned())
}

/// Runs a command and returns its stdout; fails the test with its stderr.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e} (scripts/install-test.sh provides helm and kubectl)")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The objects of a multi-document YAML stream (empty documents dropped).
fn objects(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).expect("valid YAML");
    docs.into_iter()
        .filter(|d| d.is_object() && d.get("kind").is_some())
        .collect()
}

fn helm_template(extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "template",
        RELEASE,
        "charts/bitcoin-controller",
        "--namespace",
        NAMESPACE,
        "--include-crds",
    ];
    args.extend_from_slice(extra);
    objects(&run(&tool("BC_HELM", "helm"), &args))
}

fn kustomize() -> Vec<Value> {
    objects(&run(
        &tool("BC_KUBECTL", "kubectl"),
        &["kustomize", "manifests/"],
    ))
}

fn key(o: &Value) -> String {
    let m = &o["metadata"];
    format!(
        "{}/{}/{}",
        o["kind"].as_str().unwrap_or_default(),
        m["namespace"].as_str().unwrap_or("-"),
        m["name"].as_str().unwrap_or_default()
    )
}

fn by_key(objects: Vec<Value>) -> BTreeMap<String, Value> {
    let mut map = BTreeMap::new();
    for o in objects {
        let k = key(&o);
        assert!(map.insert(k.clone(), o).is_none(), "{k} rendered twice");
    }
    map
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// True when every label of `selector` is in `labels`.
fn selects(selector: &Value, target: &Value) -> bool {
    let target = labels(target);
    let selector = labels(selector);
    !selector.is_empty() && selector.iter().all(|(k, v)| target.get(k) == Some(v))
}

/// The object as it acts: without labels and annotations (the chart adds
/// Helm's), and with the Deployment's and Service's selectors (the chart
/// selects by release too) checked for consistency and then dropped.
fn in_effect(mut o: Value) -> Value {
    let what = key(&o);
    if let Some(meta) = o["metadata"].as_object_mut() {
        meta.remove("labels");
        meta.remove("annotations");
    }
    match o["kind"].as_str() {
        Some("Deployment") => {
            let spec = &mut o["spec"];
            assert!(
                selects(
                    &spec["selector"]["matchLabels"],
                    &spec["template"]["metadata"]["labels"]
                ),
                "{what}: the selector does not select the pod template"
            );
            spec.as_object_mut().unwrap().remove("selector");
            spec["template"]["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("labels");
        }
        Some("Service") => {
            o["spec"].as_object_mut().unwrap().remove("selector");
        }
        _ => {}
    }
    o
}

/// Numbers as f64: YAML `100` and `100.0` are the same to the API server.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, v)| (k.clone(), normalized(v))).collect())
        }
        other => other.clone(),
    }
}

/// Appends `path: manifests/ X, chart Y` for every leaf where `m` and `c`
/// differ.
fn diff(path: &str, m: &Value, c: &Value, out: &mut Vec<String>) {
    match (m, c) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let (x, y) = (
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                );
                diff(&format!("{path}.{k}"), x, y, out);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), x, y, out);
            }
        }
        _ if normalized(m) == normalized(c) => {}
        _ => out.push(format!("{path}: manifests/ {m}, chart {c}")),
    }
}

/// The Service selects the Deployment's pods, in each rendering.
fn assert_service_selects_pods(objects: &BTreeMap<String, Value>, source: &str) {
    let deployment = &objects[&format!("Deployment/{NAMESPACE}/bitcoin-controller")];
    let service = &objects[&format!("Service/{NAMESPACE}/bitcoin-controller-metrics")];
    assert!(
        selects(
            &service["spec"]["selector"],
            &deployment["spec"]["template"]["metadata"]["labels"]
        ),
        "{source}: the metrics Service does not select the controller's pods"
    );
}

/// `helm template` of the default values equals `kubectl kustomize
/// manifests/`, except the Namespace: Helm installs into an existing (or
/// `--create-namespace`) namespace instead of owning it.
#[test]
fn chart_default_install_equals_manifests() {
    let mut manifests = by_key(kustomize());
    let chart = by_key(helm_template(&[]));
    assert!(
        manifests
            .remove(&format!("Namespace/-/{NAMESPACE}"))
            .is_some(),
        "manifests/ creates the Namespace {NAMESPACE}"
    );
    assert_service_selects_pods(&manifests, "manifests/");
    assert_service_selects_pods(&chart, "chart");

    let manifest_keys: Vec<&String> = manifests.keys().collect();
    let chart_keys: Vec<&String> = chart.keys().collect();
    assert_eq!(
        chart_keys, manifest_keys,
        "the chart and manifests/ create different objects"
    );
    let mut differ = Vec::new();
    for (k, m) in manifests {
        let (m, c) = (in_effect(m), in_effect(chart[&k].clone()));
        diff(&k, &m, &c, &mut differ);
    }
    assert!(
        differ.is_empty(),
        "objects differ in effect:\n{}",
        differ.join("\n")
    );
    // What the comparison covered, for the log.
    for k in chart.keys() {
        println!("same in chart and manifests/: {k}");
    }
}

/// Single-namespace mode: `--namespace`, Roles and RoleBindings in that
/// namespace only (the Secrets Role included), no cluster-wide grant.
#[test]
fn chart_single_namespace_mode_binds_roles_there_only() {
    let defaults = by_key(helm_template(&[]));
    let objects = by_key(helm_template(&["--set", "watchNamespace=nets"]));
    for (k, o) in &objects {
        let kind = o["kind"].as_str().unwrap();
        assert!(
            !matches!(kind, "ClusterRole" | "ClusterRoleBinding"),
            "{k}: single-namespace mode must not grant cluster-wide"
        );
    }
    let role = &objects["Role/nets/bitcoin-controller"];
    let cluster_role = &defaults["ClusterRole/-/bitcoin-controller"];
    assert_eq!(role["rules"], cluster_role["rules"]);
    let secrets = &objects["Role/nets/bitcoin-controller-secrets"];
    assert_eq!(
        secrets["rules"],
        defaults["ClusterRole/-/bitcoin-controller-secrets"]["rules"]
    );
    let subject = json!([{
        "kind": "ServiceAccount",
        "name": "bitcoin-controller",
        "namespace": NAMESPACE,
    }]);
    for (binding, role) in [
        ("bitcoin-controller", "bitcoin-controller"),
        ("bitcoin-controller-secrets", "bitcoin-controller-secrets"),
    ] {
        let b = &objects[&format!("RoleBinding/nets/{binding}")];
        assert_eq!(b["roleRef"]["kind"], "Role");
        assert_eq!(b["roleRef"]["name"], role);
        assert_eq!(b["subjects"], subject);
    }
    // Secrets are granted in the watched namespace only.
    let secret_grants: Vec<&String> = objects
        .iter()
        .filter(|(_, o)| {
            o["rules"].as_array().into_iter().flatten().any(|r| {
                r["resources"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("secrets"))
            })
        })
        .map(|(k, _)| k)
        .collect();
    assert_eq!(secret_grants, ["Role/nets/bitcoin-controller-secrets"]);
    // The leader-election Role stays in the release namespace.
    assert!(objects.contains_key(&format!(
        "Role/{NAMESPACE}/bitcoin-controller-leader-election"
    )));
    let args = &objects[&format!("Deployment/{NAMESPACE}/bitcoin-controller")]["spec"]["template"]
        ["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .unwrap()
            .contains(&json!("--namespace=nets")),
        "{args}"
    );
}

/// Values reach the Deployment; the ServiceMonitor is off by default.
#[test]
fn chart_values_reach_the_deployment() {
    let defaults = by_key(helm_template(&[]));
    assert!(
        !defaults.keys().any(|k| k.starts_with("ServiceMonitor/")),
        "no ServiceMonitor by default"
    );
    let objects = by_key(helm_template(&[
        "--set",
        "image.repository=registry.example/bc,image.tag=v9,replicas=3,workers=8",
        "--set",
        "resyncPeriod=1m,logLevel=bitcoin_controller=debug,leaderElection.id=bc-lease",
        "--set",
        "nodeSelector.pool=ops,tolerations[0].key=ops,tolerations[0].operator=Exists",
        "--set",
        "serviceMonitor.enabled=true,rbac.secretNamespaces={a,b}",
    ]));
    let deployment = &objects[&format!("Deployment/{NAMESPACE}/bitcoin-controller")];
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(container["image"], "registry.example/bc:v9");
    assert_eq!(
        container["args"],
        json!([
            "--workers=8",
            "--resync-period=1m",
            "--leader-elect=true",
            "--metrics-bind-address=:8080",
            "--health-probe-bind-address=:8081",
            "--leader-election-id=bc-lease",
        ])
    );
    assert_eq!(container["env"][0]["value"], "bitcoin_controller=debug");
    assert_eq!(pod["nodeSelector"], json!({"pool": "ops"}));
    assert_eq!(pod["tolerations"][0]["key"], "ops");
    let lease_role = &objects[&format!("Role/{NAMESPACE}/bitcoin-controller-leader-election")];
    assert_eq!(lease_role["rules"][1]["resourceNames"], json!(["bc-lease"]));
    let monitor = &objects[&format!("ServiceMonitor/{NAMESPACE}/bitcoin-controller")];
    assert!(selects(
        &monitor["spec"]["selector"]["matchLabels"],
        &objects[&format!("Service/{NAMESPACE}/bitcoin-controller-metrics")]["metadata"]["labels"]
    ));
    for ns in ["a", "b"] {
        let b = &objects[&format!("RoleBinding/{ns}/bitcoin-controller-secrets")];
        assert_eq!(b["roleRef"]["kind"], "ClusterRole");
        assert_eq!(b["roleRef"]["name"], "bitcoin-controller-secrets");
    }
}

/// Settings that cannot work are refused at render time.
#[test]
fn chart_refuses_settings_that_cannot_work() {
    for (set, says) in [
        (
            "leaderElection.enabled=false",
            "replicas > 1 needs leaderElection.enabled=true",
        ),
        (
            "watchNamespace=nets,rbac.secretNamespaces={a}",
            "rbac.secretNamespaces is for cluster-wide mode",
        ),
        ("resyncPeriod=1m30s", "does not match pattern"),
        (
            "watchNamespaces=nets",
            "additional properties 'watchNamespaces'",
        ),
    ] {
        let out = Command::new(tool("BC_HELM", "helm"))
            .args([
                "template",
                RELEASE,
                "charts/bitcoin-controller",
                "--set",
                set,
            ])
            .current_dir(root())
            .output()
            .expect("run helm");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(stderr.contains(says), "--set {set}: {stderr}");
    }
    // One replica without leader election is fine.
    let objects = by_key(helm_template(&[
        "--set",
        "leaderElection.enabled=false,replicas=1",
    ]));
    assert!(!objects.contains_key(&format!(
        "Role/{NAMESPACE}/bitcoin-controller-leader-election"
    )));
}

/// The chart's CRD is manifests/crd.yaml (which CI checks against
/// `bitcoin-controller crd`). Copy it after regenerating:
/// `cp manifests/crd.yaml charts/bitcoin-controller/crds/bitcoinnetworks.yaml`.
#[test]
fn chart_crd_is_manifests_crd() {
    let read = |p: &str| {
        std::fs::read_to_string(root().join(Path::new(p))).unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    assert!(
        read("charts/bitcoin-controller/crds/bitcoinnetworks.yaml") == read("manifests/crd.yaml"),
        "charts/bitcoin-controller/crds/bitcoinnetworks.yaml is stale: \
         cp manifests/crd.yaml charts/bitcoin-controller/crds/bitcoinnetworks.yaml"
    );
}
