//! Generates the `apiextensions.k8s.io/v1` CustomResourceDefinition from the
//! Rust types, so the schema the API server enforces is the one the controller
//! deserializes. `manifests/crd.yaml` is this output (CI checks for drift).

use super::{
    BitcoinNetworkSpec, BitcoinNetworkStatus, DEFAULT_IMAGE, DEFAULT_STORAGE_SIZE, GROUP,
    INTERVAL_PATTERN, KIND, MAX_EXTRA_LINES, MAX_EXTRA_LINE_LENGTH, MAX_NODES, MAX_PARTITIONS,
    PLURAL, REGTEST_ADDRESS_PATTERN, VERSION,
};
use crate::bitcoin::{OWNED_KEYS, TYPED_KEYS};
#[cfg(doc)]
use crate::controller::resources::is_image_reference;
use crate::controller::resources::MAX_NAME_LENGTH;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
    CustomResourceDefinitionSpec, CustomResourceDefinitionVersion, CustomResourceSubresourceScale,
    CustomResourceSubresourceStatus, CustomResourceSubresources, CustomResourceValidation,
    JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_core::schema::StructuralSchemaRewriter;
use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Value};

/// JSON schema of `T`, inlined and rewritten to Kubernetes' structural rules.
fn schema_of<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(StructuralSchemaRewriter)
        .into_generator();
    let mut value = generator.into_root_schema_for::<T>().to_value();
    if let Some(obj) = value.as_object_mut() {
        obj.remove("title");
    }
    value
}

/// CEL rule of `metadata.name` (see [`MAX_NAME_LENGTH`] for the length).
const NAME_RULE: &str = "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')";
/// CEL rule of `spec.image`: what [`is_image_reference`] accepts.
const IMAGE_RULE: &str = "self == '' || self.matches('^[a-zA-Z0-9][a-zA-Z0-9._/:@-]*$')";

/// CEL rule of `spec` (`self`): every ordinal of `spec.partitions` is a node.
const PARTITION_RANGE_RULE: &str =
    "!has(self.partitions) || self.partitions.all(g, g.all(o, o < self.nodes))";
/// CEL rule of `spec`: no ordinal in two groups of `spec.partitions` (each
/// group shares an ordinal with itself only; groups are non-empty sets).
const PARTITION_ONCE_RULE: &str = "!has(self.partitions) || \
    self.partitions.all(g, self.partitions.filter(h, h.exists(o, o in g)).size() == 1)";

/// CEL expression of the key of a `spec.config.extra` line (the item is
/// `self`), as [`crate::bitcoin::extra_line_key`] computes it.
const EXTRA_KEY: &str = "self.split('=')[0].trim()";

/// CEL rules of one `spec.config.extra` line, each with its message (or a
/// CEL expression making it, to name the key). They say what
/// [`crate::bitcoin::extra_line_problem`] says, in the same words.
fn extra_line_rules() -> Value {
    let k = EXTRA_KEY;
    let list = |keys: &[&str]| {
        let quoted: Vec<String> = keys.iter().map(|k| format!("'{k}'")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let owned = list(OWNED_KEYS);
    let is_option_line = "self.contains('=') && !self.trim().startsWith('-') && \
                          !self.trim().startsWith('[')";
    let mut rules = vec![
        json!({
            "rule": r"!self.matches('[\\x00-\\x08\\x0a-\\x1f\\x7f-\\x9f]')",
            "message": "a line may not contain newlines or other control characters",
        }),
        json!({
            "rule": "!self.trim().startsWith('-')",
            "message": "options in bitcoin.conf are written without a leading '-'",
        }),
        json!({
            "rule": "!self.trim().startsWith('[')",
            "message": "section headers are not allowed: every line goes under [regtest]",
        }),
        json!({
            "rule": "self.contains('=')",
            "message": "a line must be key=value",
        }),
        json!({
            "rule": format!("!({is_option_line}) || {k}.matches('^[a-z0-9]+$')"),
            "messageExpression": format!(
                "'key \\'' + {k} + '\\' is not an option name (lowercase letters and digits; \
                 no section prefix such as main.)'"
            ),
        }),
        json!({
            "rule": format!(
                "!({k} in {owned} || ({k}.startsWith('no') && {k}.substring(2) in {owned}))"
            ),
            "messageExpression": format!("{k} + ' is set by the controller and cannot be changed'"),
        }),
    ];
    for (key, field) in TYPED_KEYS {
        rules.push(json!({
            "rule": format!("!({k} == '{key}' || {k} == 'no{key}')"),
            "messageExpression": format!("{k} + ' has a typed field: use {field}'"),
        }));
    }
    Value::Array(rules)
}

/// CEL rule of `spec`: `storage` is what it was at creation, but for
/// `retain` (a StatefulSet's volume claim templates cannot change; its
/// claim retention policy can). Absent fields compare as their defaults.
fn storage_transition_rule() -> Value {
    let field = |side: &str, name: &str, default: &str| {
        format!("(has({side}.storage.{name}) ? {side}.storage.{name} : '{default}')")
    };
    let same = |name: &str, default: &str| {
        format!(
            "{} == {}",
            field("self", name, default),
            field("oldSelf", name, default)
        )
    };
    json!({
        "rule": format!(
            "has(self.storage) == has(oldSelf.storage) && (!has(self.storage) || ({} && {}))",
            same("size", DEFAULT_STORAGE_SIZE),
            same("storageClassName", ""),
        ),
        "message": "spec.storage cannot be added, removed or changed (size, storageClassName) \
                    on an existing network: the claims of its StatefulSet are fixed at \
                    creation. Create a new network with the storage you want and delete this \
                    one (with retain: true its claims stay until you delete them). Only \
                    spec.storage.retain may change.",
    })
}

/// JSON path of the label selector the scale subresource reports.
pub const SELECTOR_PATH: &str = ".status.selector";

/// The CustomResourceDefinition for `BitcoinNetwork`.
pub fn crd() -> CustomResourceDefinition {
    let mut spec = schema_of::<BitcoinNetworkSpec>();
    spec["properties"]["image"]["x-kubernetes-validations"] = json!([{
        "rule": IMAGE_RULE,
        "message": format!(
            "spec.image must be an image reference such as {DEFAULT_IMAGE}: letters, digits and \
             . _ / : @ - only, starting with a letter or digit, no whitespace"
        ),
    }]);
    let extra = &mut spec["properties"]["config"]["properties"]["extra"];
    extra["maxItems"] = json!(MAX_EXTRA_LINES);
    extra["items"]["maxLength"] = json!(MAX_EXTRA_LINE_LENGTH);
    extra["items"]["description"] =
        json!("One bitcoin.conf line, key=value, written as is under [regtest].");
    extra["items"]["x-kubernetes-validations"] = extra_line_rules();
    let partitions = &mut spec["properties"]["partitions"];
    partitions["maxItems"] = json!(MAX_PARTITIONS);
    partitions["items"]["minItems"] = json!(1);
    partitions["items"]["maxItems"] = json!(MAX_NODES);
    partitions["items"]["x-kubernetes-list-type"] = json!("set");
    partitions["items"]["description"] = json!("One group: the ordinals of its nodes.");
    partitions["items"]["items"]["minimum"] = json!(0);
    partitions["items"]["items"]["description"] =
        json!("A node ordinal (pod <name>-sts-<ordinal>).");
    spec["x-kubernetes-validations"] = json!([
        {
            "rule": PARTITION_RANGE_RULE,
            "message": "spec.partitions: every ordinal must be less than spec.nodes",
            "fieldPath": ".partitions",
        },
        {
            "rule": PARTITION_ONCE_RULE,
            "message": "spec.partitions: an ordinal may be in one group only",
            "fieldPath": ".partitions",
        },
    ]);
    let mut status = schema_of::<BitcoinNetworkStatus>();
    status["properties"]["partitions"]["items"]["properties"]["nodes"]["items"]["description"] =
        json!("A node ordinal.");
    let mining = &mut spec["properties"]["mining"]["properties"];
    mining["address"]["x-kubernetes-validations"] = json!([{
        "rule": format!("self.matches('{REGTEST_ADDRESS_PATTERN}')"),
        "message": "spec.mining.address must be a regtest address: bcrt1... (bech32, \
                    lowercase), or m..., n... or 2... (base58)",
    }]);
    mining["interval"]["x-kubernetes-validations"] = json!([{
        "rule": format!(
            "self.matches('{INTERVAL_PATTERN}') && duration(self) >= duration('1s')"
        ),
        "message": "spec.mining.interval must be a duration of at least 1s in hours, minutes \
                    and seconds, such as 30s, 5m or 1h30m",
    }]);
    let storage = &mut spec["properties"]["storage"]["properties"];
    storage["size"]["x-kubernetes-validations"] = json!([{
        "rule": "isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))",
        "message": "spec.storage.size must be a positive quantity of bytes such as 1Gi or 500Mi",
    }]);
    storage["storageClassName"]["x-kubernetes-validations"] = json!([{
        "rule": "self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')",
        "message": "spec.storage.storageClassName must be the name of a StorageClass (lowercase \
                    letters, digits, '-' and '.', starting and ending with a letter or digit)",
    }]);
    spec["x-kubernetes-validations"]
        .as_array_mut()
        .expect("the partition rules")
        .push(storage_transition_rule());
    let schema: JSONSchemaProps = serde_json::from_value(json!({
        "type": "object",
        "description": "A private Bitcoin regtest network managed by bitcoin-controller.",
        "required": ["spec"],
        "properties": {
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": [
            {
                "rule": format!("self.metadata.name.size() <= {MAX_NAME_LENGTH}"),
                "message": format!(
                    "metadata.name may have at most {MAX_NAME_LENGTH} characters: the label \
                     controller-revision-hash=<name>-sts-<10-character hash> of the network's \
                     pods must fit in 63"
                ),
            },
            {
                "rule": NAME_RULE,
                "message": "metadata.name must be a DNS-1035 label (lowercase letters, digits \
                            and '-', starting with a letter, ending with a letter or digit): \
                            the network's Service <name>-svc must be one",
            },
        ],
    }))
    .expect("generated schema is valid JSONSchemaProps");

    let column =
        |name: &str, type_: &str, path: &str, description: &str| CustomResourceColumnDefinition {
            name: name.into(),
            type_: type_.into(),
            json_path: path.into(),
            description: Some(description.into()),
            ..Default::default()
        };

    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{PLURAL}.{GROUP}")),
            ..Default::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: GROUP.into(),
            names: CustomResourceDefinitionNames {
                kind: KIND.into(),
                list_kind: Some(format!("{KIND}List")),
                plural: PLURAL.into(),
                singular: Some("bitcoinnetwork".into()),
                short_names: Some(vec!["bcn".into()]),
                categories: Some(vec!["all".into()]),
            },
            scope: "Namespaced".into(),
            versions: vec![CustomResourceDefinitionVersion {
                name: VERSION.into(),
                served: true,
                storage: true,
                schema: Some(CustomResourceValidation {
                    open_api_v3_schema: Some(schema),
                }),
                subresources: Some(CustomResourceSubresources {
                    status: Some(CustomResourceSubresourceStatus(json!({}))),
                    // `kubectl scale bitcoinnetwork/N --replicas=M` sets spec.nodes.
                    scale: Some(CustomResourceSubresourceScale {
                        spec_replicas_path: ".spec.nodes".into(),
                        status_replicas_path: ".status.readyNodes".into(),
                        label_selector_path: Some(SELECTOR_PATH.into()),
                    }),
                }),
                additional_printer_columns: Some(vec![
                    column("Nodes", "integer", ".spec.nodes", "Desired number of nodes"),
                    column(
                        "Ready",
                        "integer",
                        ".status.readyNodes",
                        "Nodes whose pod is Ready",
                    ),
                    column(
                        "Blocks",
                        "integer",
                        ".status.height",
                        "Height of the mining node's chain (status.height)",
                    ),
                    column(
                        "Status",
                        "string",
                        ".status.conditions[?(@.type==\"Ready\")].reason",
                        "Reason of the Ready condition",
                    ),
                    column(
                        "Age",
                        "date",
                        ".metadata.creationTimestamp",
                        "Time since creation",
                    ),
                ]),
                ..Default::default()
            }],
            ..Default::default()
        },
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        let crd = crd();
        let version = &crd.spec.versions[0];
        serde_json::to_value(
            version
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn names_match_the_original_controller() {
        let crd = crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("bitcoinnetworks.bitcoincontroller.christianb93.github.com")
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.versions[0].name, "v1");
        assert!(crd.spec.versions[0]
            .subresources
            .as_ref()
            .unwrap()
            .status
            .is_some());
    }

    #[test]
    fn scale_subresource_and_printer_columns() {
        let crd = crd();
        let version = &crd.spec.versions[0];
        let scale = version
            .subresources
            .as_ref()
            .unwrap()
            .scale
            .as_ref()
            .unwrap();
        assert_eq!(scale.spec_replicas_path, ".spec.nodes");
        assert_eq!(scale.status_replicas_path, ".status.readyNodes");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
        // Every path the scale subresource names is in the schema, with the
        // type the API server requires.
        let s = schema();
        assert_eq!(
            s["properties"]["spec"]["properties"]["nodes"]["type"],
            "integer"
        );
        let status = &s["properties"]["status"]["properties"];
        assert_eq!(status["readyNodes"]["type"], "integer");
        assert_eq!(status["selector"]["type"], "string");
        let columns: Vec<(&str, &str)> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| (c.name.as_str(), c.json_path.as_str()))
            .collect();
        assert_eq!(
            columns,
            [
                ("Nodes", ".spec.nodes"),
                ("Ready", ".status.readyNodes"),
                ("Blocks", ".status.height"),
                ("Status", ".status.conditions[?(@.type==\"Ready\")].reason"),
                ("Age", ".metadata.creationTimestamp"),
            ]
        );
    }

    #[test]
    fn nodes_is_a_bounded_required_integer() {
        let s = schema();
        let nodes = &s["properties"]["spec"]["properties"]["nodes"];
        assert_eq!(nodes["type"], "integer");
        assert_eq!(nodes["minimum"], 0.0);
        assert_eq!(nodes["maximum"], f64::from(crate::api::MAX_NODES));
        assert_eq!(s["properties"]["spec"]["required"], json!(["nodes"]));
    }

    #[test]
    fn names_and_images_that_cannot_work_are_refused_with_a_message() {
        let s = schema();
        let rules = s["x-kubernetes-validations"].as_array().unwrap();
        assert_eq!(rules[0]["rule"], "self.metadata.name.size() <= 48");
        assert!(rules[0]["message"].as_str().unwrap().contains("at most 48"));
        assert!(rules[1]["rule"].as_str().unwrap().contains("matches("));
        let image = &s["properties"]["spec"]["properties"]["image"]["x-kubernetes-validations"][0];
        assert_eq!(image["rule"], IMAGE_RULE);
        assert!(image["message"].as_str().unwrap().starts_with("spec.image"));
        // The controller's own check agrees with the CEL pattern.
        use crate::controller::resources::is_image_reference;
        for ok in [
            "",
            "bitcoin/bitcoin:29.0",
            "localhost:5000/x/y@sha256:ab12",
            "regtest-node:test",
        ] {
            assert!(is_image_reference(ok), "{ok}");
        }
        for bad in [" bitcoin", "bitcoin ", "a\tb", "-x", "x y", "UPPER CASE"] {
            assert!(!is_image_reference(bad), "{bad:?}");
        }
    }

    /// The rules of `spec.config.extra` items are bounded (the API server
    /// refuses a CRD whose rules may cost too much) and name every owned
    /// and typed key; the end-to-end test checks what they do.
    #[test]
    fn extra_lines_are_bounded_and_checked_for_every_owned_key() {
        let s = schema();
        let extra = &s["properties"]["spec"]["properties"]["config"]["properties"]["extra"];
        assert_eq!(extra["maxItems"], json!(MAX_EXTRA_LINES));
        assert_eq!(extra["items"]["maxLength"], json!(MAX_EXTRA_LINE_LENGTH));
        let rules = extra["items"]["x-kubernetes-validations"]
            .as_array()
            .unwrap();
        let text = serde_json::to_string(rules).unwrap();
        for key in OWNED_KEYS {
            assert!(text.contains(&format!("'{key}'")), "{key} is not checked");
        }
        for (key, field) in TYPED_KEYS {
            assert!(
                text.contains(&format!("'{key}'")) && text.contains(field),
                "{key}"
            );
        }
        for rule in rules {
            assert!(rule["message"].is_string() != rule["messageExpression"].is_string());
        }
    }

    /// Structural schemas need a type on every node and no $ref.
    #[test]
    fn schema_is_structural() {
        fn walk(v: &Value, path: &str) {
            let obj = v.as_object().unwrap();
            assert!(obj.contains_key("type"), "no type at {path}: {v}");
            assert!(!obj.contains_key("$ref"), "$ref at {path}");
            if let Some(props) = obj.get("properties").and_then(Value::as_object) {
                for (k, p) in props {
                    walk(p, &format!("{path}.{k}"));
                }
            }
            if let Some(items) = obj.get("items") {
                walk(items, &format!("{path}[]"));
            }
        }
        walk(&schema(), "");
    }

    /// `kubectl explain bitcoinnetwork.<path>` shows the schema's
    /// descriptions: every property of spec and status (and of the items of
    /// their lists, metav1.Condition's fields included) must have one.
    #[test]
    fn every_schema_property_has_a_description() {
        fn walk(v: &Value, path: &str, missing: &mut Vec<String>, seen: &mut usize) {
            *seen += 1;
            let described = v
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.trim().is_empty());
            if !described {
                missing.push(path.to_owned());
            }
            if let Some(props) = v.get("properties").and_then(Value::as_object) {
                for (k, p) in props {
                    walk(p, &format!("{path}.{k}"), missing, seen);
                }
            }
            if let Some(items) = v.get("items") {
                walk(items, &format!("{path}[]"), missing, seen);
            }
            if let Some(extra) = v.get("additionalProperties").filter(|a| a.is_object()) {
                walk(extra, &format!("{path}{{}}"), missing, seen);
            }
        }
        let (mut missing, mut seen) = (Vec::new(), 0);
        walk(&schema(), "bitcoinnetwork", &mut missing, &mut seen);
        assert!(missing.is_empty(), "no description at {missing:?}");
        // The walk reached the nested properties: spec (3), status (5), a
        // node (8), a condition (6), and the objects and lists above them.
        assert!(seen >= 27, "walked only {seen} schema nodes");
        let conditions = &schema()["properties"]["status"]["properties"]["conditions"];
        for field in ["type", "status", "reason", "message", "lastTransitionTime"] {
            assert!(
                conditions["items"]["properties"][field]["description"].is_string(),
                "status.conditions[].{field} has no description"
            );
        }
    }
}
