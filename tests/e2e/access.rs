//! Access for apps (`spec.service`): the `N-rpc` Service the controller
//! keeps for a network, and `status.rpc` saying how to connect. On both
//! lanes: the Service's type, selector, ports and owner; one node served,
//! moved when that node goes away and back when it returns, with no write
//! at rest; NodePort allocated and shown; removed with `spec.service`. On
//! the real node (`real_node_` scenario): a client pod reaches the RPC
//! through the Service's DNS name and through the node port, with the
//! credentials from the Secret by `secretKeyRef`.

use std::time::Duration;

use bitcoin_controller::api::{BitcoinNetwork, BitcoinNetworkStatus, RpcAccess};
use bitcoin_controller::controller::resources::{
    is_controlled_by, secret_value, NETWORK_LABEL, PASSWORD_KEY, POD_NAME_LABEL,
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube_client::api::{DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube_client::{Api, Client};
use serde_json::{json, Value};

use crate::harness::*;

/// Creates a network of `nodes` nodes with `spec.service: {type: type_}`.
async fn create_served_network(
    client: &Client,
    ns: &str,
    name: &str,
    nodes: i32,
    type_: &str,
) -> BitcoinNetwork {
    let net: BitcoinNetwork = serde_json::from_value(json!({
        "apiVersion": "bitcoincontroller.christianb93.github.com/v1",
        "kind": "BitcoinNetwork",
        "metadata": {"name": name},
        "spec": {"nodes": nodes, "image": lane_image(), "service": {"type": type_}},
    }))
    .expect("network");
    Api::<BitcoinNetwork>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &net)
        .await
        .expect("create network")
}

/// The pod name the Service's selector names.
fn served_pod(svc: &Service) -> String {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .and_then(|s| s.get(POD_NAME_LABEL).cloned())
        .unwrap_or_default()
}

/// The node port of the Service's `rpc` port.
fn rpc_node_port(svc: &Service) -> Option<i32> {
    svc.spec
        .as_ref()?
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("rpc"))?
        .node_port
}

/// Waits until the Service `name` exists and `accept` holds for it.
async fn wait_for_service(
    api: &Api<Service>,
    name: &str,
    what: &str,
    accept: impl Fn(&Service) -> bool,
) -> Service {
    let accept = &accept;
    wait_for(what, CONVERGE, || async move {
        match api.get_opt(name).await.map_err(|e| e.to_string())? {
            Some(svc) if accept(&svc) => Ok(svc),
            other => Err(format!("{:?}", other.map(|s| s.spec))),
        }
    })
    .await
    .0
}

/// `spec.service` on a 2-node network: Service `app-rpc` of the right type,
/// selector (the pod of node 0, and only it), named ports and owner;
/// `status.rpc` says how to connect and holds no secret; no write at rest;
/// node 0 going away moves the Service to node 1 and back when it returns
/// (one write each, seen by a watch); NodePort gets a node port that status
/// shows, back to ClusterIP drops it; removing `spec.service` deletes the
/// Service and `status.rpc`.
#[tokio::test]
async fn service_for_apps_follows_spec_service() {
    let admin = admin_client().await;
    let _controller = ControllerProcess::start("access", &["--resync-period", "4s"]);
    let ns = TestNamespace::create(&admin, "e2e-access").await;
    let net = create_served_network(&admin, &ns.name, "app", 2, "ClusterIP").await;
    let services: Api<Service> = Api::namespaced(admin.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns.name);
    let networks: Api<BitcoinNetwork> = Api::namespaced(admin.clone(), &ns.name);

    // The Service: owned, ClusterIP, node 0's pod, ports rpc and p2p.
    let svc = wait_for_service(&services, "app-rpc", "Service app-rpc", |_| true).await;
    assert!(is_controlled_by(&svc.metadata, &net), "{:?}", svc.metadata);
    let spec = svc.spec.clone().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert!(
        spec.cluster_ip.as_deref().is_some_and(|ip| ip != "None"),
        "a cluster IP: {:?}",
        spec.cluster_ip
    );
    assert_eq!(
        spec.selector.clone().unwrap(),
        [
            (NETWORK_LABEL.to_owned(), "app".to_owned()),
            (POD_NAME_LABEL.to_owned(), "app-sts-0".to_owned()),
        ]
        .into()
    );
    let ports: Vec<(String, i32, String)> = spec
        .ports
        .unwrap()
        .into_iter()
        .map(|p| {
            let target = match p.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => s,
                other => format!("{other:?}"),
            };
            (p.name.unwrap_or_default(), p.port, target)
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("rpc".to_owned(), 18443, "rpc".to_owned()),
            ("p2p".to_owned(), 18444, "p2p".to_owned()),
        ]
    );

    // The selector matches exactly one pod: node 0's.
    let (status, took) =
        wait_for_status(&admin, &ns.name, "app", "2 ready nodes", all_ready(2)).await;
    report("access", "2 nodes ready", took);
    let selected = pods
        .list(
            &ListParams::default()
                .labels(&format!("{NETWORK_LABEL}=app,{POD_NAME_LABEL}=app-sts-0")),
        )
        .await
        .expect("list pods");
    let names: Vec<_> = selected
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(names, ["app-sts-0"]);

    // Settled: every node meshed and the network Ready.
    let nodes = Nodes::for_network(&admin, &ns.name, "app").await;
    nodes.wait_for_mesh(&ips(&status)).await;
    wait_for_status(&admin, &ns.name, "app", "Ready", |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
    .await;

    // status.rpc: how to connect; no secret value in it (nor anywhere in
    // the status).
    let want = RpcAccess {
        service: "app-rpc".into(),
        port: 18443,
        node_port: None,
        credentials_secret: "app".into(),
        node: Some(0),
    };
    let (status, _) = wait_for_status(&admin, &ns.name, "app", "status.rpc", |s| {
        s.rpc.as_ref() == Some(&want)
    })
    .await;
    let password = {
        let secret = Api::<Secret>::namespaced(admin.clone(), &ns.name)
            .get("app")
            .await
            .expect("credentials Secret");
        secret_value(&secret, PASSWORD_KEY).unwrap().to_owned()
    };
    let text = serde_json::to_string(&status).unwrap();
    assert!(!text.contains(&password), "a password in the status");
    println!(
        "status.rpc: {}",
        serde_json::to_string(&status.rpc).unwrap()
    );

    // At rest (more than two resyncs of the local controller): neither the
    // Service nor the network is written.
    let svc_rv = |s: &Service| s.metadata.resource_version.clone();
    let before = (
        svc_rv(&services.get("app-rpc").await.unwrap()),
        networks.get("app").await.unwrap().metadata.resource_version,
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = (
        svc_rv(&services.get("app-rpc").await.unwrap()),
        networks.get("app").await.unwrap().metadata.resource_version,
    );
    assert_eq!(before, after, "(Service, network) resourceVersions at rest");

    // Node 0 goes away: the Service moves to node 1, and back to node 0
    // once its new pod is ready. A watch sees every version of it.
    let svc = services.get("app-rpc").await.unwrap();
    let rv = svc.metadata.resource_version.clone().unwrap();
    let mut watch = services
        .watch(
            &WatchParams::default()
                .fields("metadata.name=app-rpc")
                .timeout(120),
            &rv,
        )
        .await
        .expect("watch Service app-rpc")
        .boxed();
    let old_ip = status.nodes[0].ip.clone();
    pods.delete("app-sts-0", &DeleteParams::default())
        .await
        .expect("delete pod app-sts-0");
    let mut served = vec![served_pod(&svc)];
    let moved = tokio::time::timeout(CONVERGE, async {
        while let Some(event) = watch.try_next().await.expect("watch") {
            if let WatchEvent::Modified(s) = event {
                let pod = served_pod(&s);
                if served.last() != Some(&pod) {
                    served.push(pod);
                }
                if served.len() == 3 {
                    return;
                }
            }
        }
    })
    .await;
    assert!(moved.is_ok(), "served pods seen: {served:?}");
    assert_eq!(served, ["app-sts-0", "app-sts-1", "app-sts-0"]);
    let (status, _) = wait_for_status(&admin, &ns.name, "app", "node 0 back", |s| {
        all_ready(2)(s) && s.nodes[0].ip != old_ip && s.rpc.as_ref().and_then(|r| r.node) == Some(0)
    })
    .await;
    println!(
        "served pods while node 0 was replaced: {served:?} (node 0 {old_ip} -> {})",
        status.nodes[0].ip
    );

    // NodePort: allocated by the API server, shown in status.rpc.
    patch_spec(
        &admin,
        &ns.name,
        "app",
        json!({"service": {"type": "NodePort"}}),
    )
    .await;
    let svc = wait_for_service(&services, "app-rpc", "a NodePort Service", |s| {
        rpc_node_port(s).is_some()
    })
    .await;
    let node_port = rpc_node_port(&svc).unwrap();
    assert!((30000..=32767).contains(&node_port), "{node_port}");
    let (status, _) = wait_for_status(&admin, &ns.name, "app", "status.rpc.nodePort", |s| {
        s.rpc.as_ref().and_then(|r| r.node_port) == Some(node_port)
    })
    .await;
    println!(
        "NodePort: status.rpc {}",
        serde_json::to_string(&status.rpc).unwrap()
    );

    // Back to ClusterIP: the node port goes (the API server drops it when
    // the type changes), and from status.rpc.
    patch_spec(
        &admin,
        &ns.name,
        "app",
        json!({"service": {"type": "ClusterIP"}}),
    )
    .await;
    wait_for_service(&services, "app-rpc", "ClusterIP again, no node port", |s| {
        s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ClusterIP")
            && rpc_node_port(s).is_none()
    })
    .await;
    wait_for_status(
        &admin,
        &ns.name,
        "app",
        "status.rpc without nodePort",
        |s| s.rpc.as_ref() == Some(&want),
    )
    .await;

    // spec.service removed: the Service and status.rpc go; the headless
    // Service stays.
    patch_spec(&admin, &ns.name, "app", json!({"service": null})).await;
    let (_, took) = wait_for("Service app-rpc deleted", CONVERGE, || async {
        match services
            .get_opt("app-rpc")
            .await
            .map_err(|e| e.to_string())?
        {
            None => Ok(()),
            Some(s) => Err(format!("still there: {:?}", s.metadata.deletion_timestamp)),
        }
    })
    .await;
    report("access", "Service deleted after spec.service removed", took);
    wait_for_status(
        &admin,
        &ns.name,
        "app",
        "no status.rpc",
        |s: &BitcoinNetworkStatus| s.rpc.is_none(),
    )
    .await;
    assert!(services.get_opt("app-svc").await.unwrap().is_some());
    wait_for_event(&admin, &ns.name, "app", "Normal", "Deleted").await;

    ns.delete().await;
}

/// A client pod: the node test image's `bitcoin-cli` calling
/// `getblockchaininfo` at `host:port`, with the user and password from the
/// network's credentials Secret by `secretKeyRef` (the pod spec names the
/// Secret, never a value; `$(VAR)` is expanded by the kubelet). Returns the
/// pod's output once it has succeeded.
async fn run_client_pod(client: &Client, ns: &str, name: &str, host: &str, port: i32) -> Value {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let from_secret = |var: &str| json!({"name": var, "valueFrom": {"secretKeyRef": {"name": "app", "key": var}}});
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "client",
                "image": NODE_IMAGE,
                "command": [
                    "bitcoin-cli",
                    format!("-rpcconnect={host}"),
                    format!("-rpcport={port}"),
                    "-rpcuser=$(BC_RPC_USER)",
                    "-rpcpassword=$(BC_RPC_PASSWORD)",
                    "-rpcclienttimeout=10",
                    "getblockchaininfo",
                ],
                "env": [from_secret("BC_RPC_USER"), from_secret("BC_RPC_PASSWORD")],
                "securityContext": {
                    "runAsNonRoot": true,
                    "runAsUser": 1000,
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                },
            }],
        },
    }))
    .expect("client pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create client pod");
    let (phase, took) = wait_for(&format!("client pod {name} done"), CONVERGE, || async {
        let pod = pods.get(name).await.map_err(|e| e.to_string())?;
        match pod.status.and_then(|s| s.phase).as_deref() {
            Some(phase @ ("Succeeded" | "Failed")) => Ok(phase.to_owned()),
            other => Err(format!("phase {other:?}")),
        }
    })
    .await;
    let (ok, out, err) = kubectl(&["logs", "-n", ns, name]);
    assert!(ok, "kubectl logs {name}: {err}");
    assert_eq!(phase, "Succeeded", "client pod {name}: {out}");
    println!(
        "client pod {name} (bitcoin-cli -rpcconnect={host} -rpcport={port} getblockchaininfo, \
         {:.2}s):\n{out}",
        took.as_secs_f64()
    );
    serde_json::from_str(&out).expect("getblockchaininfo JSON")
}

/// `kubectl port-forward -n NS TARGET :PORT`, running until dropped; the
/// local port it chose.
struct PortForward {
    child: std::process::Child,
    port: u16,
}

impl PortForward {
    fn start(ns: &str, target: &str, port: i32) -> Self {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        // stderr goes to the test's output; stdout is read to the end (in
        // a thread once the port is known): kubectl writes a line per
        // connection and dies of SIGPIPE if nobody reads them.
        let mut child = Command::new("kubectl")
            .args(["port-forward", "-n", ns, target, &format!(":{port}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run kubectl port-forward");
        // "Forwarding from 127.0.0.1:41234 -> 18443"
        let prefix = "Forwarding from 127.0.0.1:";
        let suffix = format!(" -> {port}");
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let local = lines.by_ref().map_while(Result::ok).find_map(|l| {
            l.strip_prefix(prefix)?
                .strip_suffix(suffix.as_str())?
                .parse::<u16>()
                .ok()
        });
        std::thread::spawn(move || lines.for_each(drop));
        let Some(local) = local else {
            let status = child.wait().expect("kubectl port-forward");
            panic!("kubectl port-forward {target} ended ({status}) before forwarding (its stderr is above)");
        };
        PortForward { child, port: local }
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// On the real node, a NodePort network: a client pod calls
/// `getblockchaininfo` through `app-rpc.NS.svc` (cluster DNS, the Service's
/// cluster IP, kube-proxy) and through the node's address and the node
/// port, and reaches the serving node (node 0: same tip, and the Service's
/// EndpointSlice holds its address only); the credentials come from the
/// Secret by `secretKeyRef` and are in no pod spec. From the host,
/// `kubectl port-forward svc/app-rpc` reaches the same node.
#[tokio::test]
async fn real_node_app_reaches_rpc_through_the_service() {
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    if !crate::node::real_node("real_node_app_reaches_rpc_through_the_service") {
        return;
    }
    let admin = admin_client().await;
    let ns = TestNamespace::create(&admin, "node-access").await;
    create_served_network(&admin, &ns.name, "app", 2, "NodePort").await;
    let (status, _) = wait_for_status(&admin, &ns.name, "app", "2 ready nodes", all_ready(2)).await;
    let nodes = Nodes::for_network(&admin, &ns.name, "app").await;
    let ips = ips(&status);
    nodes.wait_for_mesh(&ips).await;
    let tip = nodes.mine(&ips[0], 5).await;
    nodes.wait_for_tip(&ips, &tip).await;
    let (status, _) = wait_for_status(&admin, &ns.name, "app", "status.rpc.nodePort", |s| {
        s.rpc.as_ref().is_some_and(|r| r.node_port.is_some())
    })
    .await;
    let rpc = status.rpc.clone().unwrap();
    println!("status.rpc: {}", serde_json::to_string(&rpc).unwrap());
    assert_eq!(rpc.node, Some(0));

    // The Service's endpoints: node 0's pod only.
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), &ns.name);
    let node0 = status.nodes[0].ip.clone();
    wait_for(
        "EndpointSlice of app-rpc with node 0 only",
        CONVERGE,
        || async {
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=app-rpc"))
                .await
                .map_err(|e| e.to_string())?;
            let addresses: Vec<String> = list
                .items
                .iter()
                .flat_map(|s| s.endpoints.iter().flatten())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .flat_map(|e| e.addresses.clone())
                .collect();
            if addresses == [node0.clone()] {
                Ok(())
            } else {
                Err(format!("{addresses:?}"))
            }
        },
    )
    .await;

    // Through the cluster DNS name of the Service.
    let dns = format!("{}.{}.svc", rpc.service, ns.name);
    let info = run_client_pod(&admin, &ns.name, "client-dns", &dns, rpc.port).await;
    assert_eq!(info["chain"], "regtest");
    assert_eq!(info["blocks"], 5);
    assert_eq!(info["bestblockhash"], tip);

    // Through the node port on the node's address.
    let node_ip = std::env::var("BC_NODE_IP").expect("BC_NODE_IP on the kubelet lane");
    let node_port = rpc.node_port.unwrap();
    let info = run_client_pod(&admin, &ns.name, "client-nodeport", &node_ip, node_port).await;
    assert_eq!(info["blocks"], 5);
    assert_eq!(info["bestblockhash"], tip);

    // From the host through `kubectl port-forward svc/app-rpc` (the
    // README's recipe): the real kubectl, kube-apiserver, kubelet and
    // containerd's stream server into the serving pod.
    let forward = PortForward::start(&ns.name, &format!("svc/{}", rpc.service), rpc.port);
    for call in 1..=2 {
        // Twice: a forward must serve more than its first connection.
        let info = nodes
            .call_at("127.0.0.1", forward.port, "getblockchaininfo", vec![])
            .await
            .expect("getblockchaininfo through kubectl port-forward");
        assert_eq!(info["bestblockhash"], tip);
        println!(
            "kubectl port-forward svc/{} :{}, call {call} at 127.0.0.1:{}: height {}",
            rpc.service, rpc.port, forward.port, info["blocks"]
        );
    }
    drop(forward);

    // No credential in any pod spec (the clients' nor the nodes').
    let secret = Api::<Secret>::namespaced(admin.clone(), &ns.name)
        .get("app")
        .await
        .expect("credentials Secret");
    let password = secret_value(&secret, PASSWORD_KEY).unwrap().to_owned();
    for pod in Api::<Pod>::namespaced(admin.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .expect("list pods")
        .items
    {
        let spec = serde_json::to_string(&pod.spec).unwrap();
        assert!(
            !spec.contains(&password),
            "password in {:?}",
            pod.metadata.name
        );
    }

    ns.delete().await;
}
