//! The flow format's three descriptions agree: the Rust types and their
//! validation (`herald_core::flow`), the JSON Schema
//! (`schemas/flow.schema.json`) and the user documentation (`docs/flows.md`).
//!
//! Examples in `docs/flows.md`: every fenced block whose info string starts
//! with `json` is checked. The words after `json` say what the block is:
//!
//! - one or more channels (`voice`, `sms`, `whatsapp`): a whole flow
//!   document, which must be valid for each channel named and must validate
//!   against the schema, e.g. ```` ```json sms whatsapp ````;
//! - `payload`: JSON that is not a flow (a request or callback body); it
//!   must parse, nothing more.
//!
//! A `json` block with neither fails the test, so that no example goes
//! unchecked by forgetting to label it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use herald_core::flow::{FlowDefinition, Node};
use herald_core::Channel;
use serde_json::{json, Value};

fn repo_file(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn schema() -> Value {
    serde_json::from_str(&repo_file("schemas/flow.schema.json")).expect("the schema is JSON")
}

fn validator() -> jsonschema::Validator {
    jsonschema::draft202012::new(&schema()).expect("the schema compiles")
}

/// Why the schema refuses `doc`, or `None` when it accepts it.
fn schema_errors(validator: &jsonschema::Validator, doc: &Value) -> Option<String> {
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}

/// The flows that use every node type, shared with the unit tests.
fn fixtures() -> Vec<(&'static str, Vec<Channel>, Value)> {
    [
        ("every_node_voice.json", vec![Channel::Voice]),
        ("every_node_sms.json", vec![Channel::Sms, Channel::Whatsapp]),
    ]
    .into_iter()
    .map(|(name, channels)| {
        let text = repo_file(&format!("crates/herald-core/tests/flows/{name}"));
        (name, channels, serde_json::from_str(&text).expect(name))
    })
    .collect()
}

/// A fenced `json` block of the documentation.
struct Example {
    line: usize,
    words: Vec<String>,
    body: String,
}

fn doc_examples() -> Vec<Example> {
    let doc = repo_file("docs/flows.md");
    let mut examples = Vec::new();
    let mut open: Option<Example> = None;
    for (i, line) in doc.lines().enumerate() {
        match open.as_mut() {
            None => {
                if let Some(info) = line.trim_start().strip_prefix("```json") {
                    open = Some(Example {
                        line: i + 1,
                        words: info.split_whitespace().map(str::to_owned).collect(),
                        body: String::new(),
                    });
                }
            }
            Some(example) => {
                if line.trim_start().starts_with("```") {
                    examples.extend(open.take());
                } else {
                    example.body.push_str(line);
                    example.body.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "docs/flows.md ends inside a code block");
    examples
}

/// The documentation's flows, with the channels each is for.
fn doc_flows() -> Vec<(usize, Vec<Channel>, Value)> {
    let mut flows = Vec::new();
    for example in doc_examples() {
        let at = format!("docs/flows.md:{}", example.line);
        let value: Value =
            serde_json::from_str(&example.body).unwrap_or_else(|e| panic!("{at}: not JSON: {e}"));
        if example.words == ["payload"] {
            continue;
        }
        assert!(
            !example.words.is_empty(),
            "{at}: label the block with its channels (```json sms) or as ```json payload"
        );
        let channels: Vec<Channel> = example
            .words
            .iter()
            .map(|w| {
                w.parse()
                    .unwrap_or_else(|()| panic!("{at}: '{w}' is not a channel"))
            })
            .collect();
        flows.push((example.line, channels, value));
    }
    flows
}

#[test]
fn the_schema_is_a_valid_draft_2020_12_schema() {
    let schema = schema();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    jsonschema::meta::validate(&schema).expect("the schema is valid against its meta-schema");
}

#[test]
fn every_documented_flow_is_valid_and_fits_the_schema() {
    let validator = validator();
    let flows = doc_flows();
    let mut types = BTreeSet::new();
    for (line, channels, doc) in &flows {
        for &channel in channels {
            match FlowDefinition::from_json(doc, channel) {
                Ok(flow) => types.extend(flow.all_nodes().map(|n| n.kind.type_name())),
                Err(e) => panic!("docs/flows.md:{line}: refused on {channel}: {e}"),
            }
        }
        if let Some(errors) = schema_errors(&validator, doc) {
            panic!("docs/flows.md:{line}: the schema refuses it: {errors}");
        }
    }
    assert_eq!(types.len(), 17, "the examples show {types:?}");
}

#[test]
fn the_fixtures_fit_the_schema() {
    let validator = validator();
    for (name, channels, doc) in fixtures() {
        for channel in channels {
            FlowDefinition::from_json(&doc, channel)
                .unwrap_or_else(|e| panic!("{name} on {channel}: {e}"));
        }
        if let Some(errors) = schema_errors(&validator, &doc) {
            panic!("{name}: the schema refuses it: {errors}");
        }
    }
}

/// Each node type's fields in the schema: (all properties, required ones).
fn schema_node_fields() -> BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> {
    let schema = schema();
    let defs = &schema["$defs"];
    let mut fields = BTreeMap::new();
    for node_type in defs["node"]["properties"]["type"]["enum"]
        .as_array()
        .unwrap()
    {
        let node_type = node_type.as_str().unwrap();
        let def = &defs[format!("node_{node_type}")];
        assert!(def.is_object(), "the schema has no $defs.node_{node_type}");
        let keys = |v: &Value| -> BTreeSet<String> {
            v.as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default()
        };
        let required = def["required"]
            .as_array()
            .map(|r| r.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        fields.insert(node_type.to_owned(), (keys(&def["properties"]), required));
    }
    fields
}

#[test]
fn the_schema_and_the_types_agree_on_every_node_field() {
    // Between them the fixtures use every field of every node type, so that
    // comparing them with the schema compares the whole node vocabulary.
    let fields = schema_node_fields();
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, _, doc) in fixtures() {
        let subflow_nodes = doc["subflows"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["nodes"].as_array().unwrap());
        for node in doc["nodes"].as_array().unwrap().iter().chain(subflow_nodes) {
            let node_type = node["type"].as_str().unwrap();
            let (_, required) = fields
                .get(node_type)
                .unwrap_or_else(|| panic!("{name}: the schema has no node type {node_type}"));
            let node = node.as_object().unwrap();
            seen.entry(node_type.to_owned())
                .or_default()
                .extend(node.keys().cloned());
            // Without any one field, Rust decodes the node exactly when the
            // schema does not require that field.
            for key in node.keys().filter(|k| *k != "type") {
                let mut without = node.clone();
                without.remove(key);
                let decodes = serde_json::from_value::<Node>(Value::Object(without)).is_ok();
                assert_eq!(
                    decodes,
                    !required.contains(key),
                    "{name}: {node_type}.{key}: Rust {} it optional, the schema does not",
                    if decodes { "finds" } else { "does not find" }
                );
            }
        }
    }
    let schema_fields: BTreeMap<String, BTreeSet<String>> =
        fields.into_iter().map(|(t, (all, _))| (t, all)).collect();
    assert_eq!(seen, schema_fields);
}

#[test]
fn the_schema_and_the_types_agree_on_top_level_fields() {
    let schema = schema();
    let properties: BTreeSet<String> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let required: BTreeSet<String> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    let (_, _, doc) = &fixtures()[0];
    let doc = doc.as_object().unwrap();
    assert_eq!(doc.keys().cloned().collect::<BTreeSet<_>>(), properties);
    for key in doc.keys() {
        let mut without = doc.clone();
        without.remove(key);
        let decodes = serde_json::from_value::<FlowDefinition>(Value::Object(without)).is_ok();
        assert_eq!(decodes, !required.contains(key), "flow.{key}");
    }
}

#[test]
fn the_schema_refuses_what_the_types_refuse() {
    let validator = validator();
    let valid = json!({"format": 1, "start": "a", "nodes": [
        {"id": "a", "type": "send_message", "text": "Hi", "next": "b"},
        {"id": "b", "type": "end"}
    ]});
    assert_eq!(schema_errors(&validator, &valid), None);

    let bad = |edit: &dyn Fn(&mut Value)| {
        let mut doc = valid.clone();
        edit(&mut doc);
        doc
    };
    let cases = [
        (
            "unknown node type",
            bad(&|d| d["nodes"][1]["type"] = json!("dance")),
        ),
        (
            "missing required field",
            bad(&|d| {
                d["nodes"][0].as_object_mut().unwrap().remove("text");
            }),
        ),
        (
            "unknown node field",
            bad(&|d| d["nodes"][1]["colour"] = json!("red")),
        ),
        (
            "field of another node type",
            bad(&|d| d["nodes"][0]["prompt"] = json!("?")),
        ),
        ("unknown top-level field", bad(&|d| d["title"] = json!("x"))),
        (
            "missing nodes",
            bad(&|d| {
                d.as_object_mut().unwrap().remove("nodes");
            }),
        ),
        (
            "wrong field type",
            bad(&|d| d["nodes"][0]["text"] = json!(5)),
        ),
        ("other format", bad(&|d| d["format"] = json!(2))),
        (
            "node without a type",
            bad(&|d| {
                d["nodes"][1].as_object_mut().unwrap().remove("type");
            }),
        ),
        (
            "classify with both prompt and input",
            bad(&|d| {
                d["nodes"][0] = json!({"id": "a", "type": "classify", "prompt": "?", "input": "$LAST_INPUT",
                    "intents": [{"name": "x", "examples": ["x"], "next": "b"}], "fallback": "b"})
            }),
        ),
        (
            "rule without a value",
            bad(&|d| {
                d["nodes"][0] = json!({"id": "a", "type": "conditions", "default": "b",
                    "branches": [{"rules": [{"parameter": "LAST_INPUT", "op": "eq"}], "next": "b"}]})
            }),
        ),
        (
            "webhook method",
            bad(&|d| {
                d["nodes"][0] = json!({"id": "a", "type": "webhook", "method": "FETCH",
                    "url": "https://e.example/", "success": "b", "failure": "b"})
            }),
        ),
    ];
    for (what, doc) in cases {
        assert!(
            schema_errors(&validator, &doc).is_some(),
            "the schema accepts a flow with {what}"
        );
        assert!(
            FlowDefinition::from_json(&doc, Channel::Sms).is_err(),
            "herald accepts a flow with {what}"
        );
    }
}
