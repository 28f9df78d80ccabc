//! `rpc.discover`: the OpenRPC document lists exactly the methods the
//! server registers (both come from one table), and it is a valid OpenRPC
//! document by the OpenRPC meta-schema.
//!
//! The meta-schema comes from its npm package, fetched by
//! `scripts/env.sh` (`ensure_openrpc_schemas`) into
//! `$PHALANX_OPENRPC_SCHEMAS`; the test itself reads only files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use phalanx_crypto::KeyPair;
use phalanx_node::ingress::INGRESS_QUEUE;
use phalanx_node::mempool::MempoolLimits;
use phalanx_node::metrics::Metrics;
use phalanx_node::rpc;
use phalanx_node::shared::Shared;
use phalanx_storage::testkit::genesis;
use phalanx_storage::{Store, StoreOptions};
use serde_json::Value;

fn schemas_dir() -> PathBuf {
    std::env::var_os("PHALANX_OPENRPC_SCHEMAS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME");
            PathBuf::from(home).join(".cache/phalanx/openrpc-1.14.9")
        })
}

fn load(name: &str) -> Value {
    let p = schemas_dir().join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `source scripts/env.sh && ensure_openrpc_schemas` (scripts/test.sh does)",
            p.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

/// The JSON Schema meta-schema the OpenRPC one refers to, served from
/// the file instead of the network.
struct Local(Value);

impl jsonschema::Retrieve for Local {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        if uri.as_str().trim_end_matches('/') == "https://meta.json-schema.tools" {
            Ok(self.0.clone())
        } else {
            Err(format!("{uri} is not held locally").into())
        }
    }
}

fn validator() -> jsonschema::Validator {
    let mut schema = load("openrpc.json");
    let mut meta = load("json-schema-tools.json");
    // Their `$schema` names a custom meta-schema; both are draft 7.
    schema.as_object_mut().unwrap().remove("$schema");
    meta.as_object_mut().unwrap().remove("$schema");
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .with_retriever(Local(meta))
        .build(&schema)
        .unwrap()
}

/// The document as the server answers it, and the server's method names.
fn served() -> (Value, BTreeSet<String>) {
    let dir = tempfile::tempdir().unwrap();
    let g = genesis(4);
    let store = Arc::new(Store::open(dir.path(), &g, StoreOptions::default()).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let metrics = Arc::new(Metrics::new(4, &rpc::method_names()));
        let (shared, status) = Shared::new(
            store,
            &g,
            KeyPair::from_seed([1; 32]).public(),
            MempoolLimits::default(),
            metrics,
        );
        std::mem::forget(status);
        let (tx, _rx) = tokio::sync::mpsc::channel(INGRESS_QUEUE);
        let methods = rpc::methods(Arc::new(shared), tx).unwrap();
        let names = methods.method_names().map(str::to_string).collect();
        let doc: Value = methods
            .call("rpc.discover", jsonrpsee_core::params::ArrayParams::new())
            .await
            .unwrap();
        (doc, names)
    })
}

#[test]
fn the_document_lists_exactly_the_served_methods_and_is_valid_openrpc() {
    let (doc, served) = served();
    let documented: BTreeSet<String> = doc["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(documented, served);
    assert!(served.contains("ledger_getAccount") && served.contains("rpc.discover"));
    let v = validator();
    let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // Every parameter and result schema is a real schema (not the empty
    // object a typo in the table would leave).
    for m in doc["methods"].as_array().unwrap() {
        assert_ne!(
            m["result"]["schema"],
            serde_json::json!({}),
            "{}",
            m["name"]
        );
        for p in m["params"].as_array().unwrap() {
            assert_ne!(
                p["schema"],
                serde_json::json!({}),
                "{} {}",
                m["name"],
                p["name"]
            );
        }
    }
}

#[test]
fn the_validator_refuses_a_document_that_breaks_the_openrpc_schema() {
    let (mut doc, _) = served();
    let v = validator();
    assert!(v.is_valid(&doc));
    // A method without a name, params that are not a list, an unknown
    // version and an unknown top-level field are each refused.
    doc["methods"][0].as_object_mut().unwrap().remove("name");
    assert!(!v.is_valid(&doc));
    let (mut doc, _) = served();
    doc["methods"][1]["params"] = serde_json::json!({"a": 1});
    assert!(!v.is_valid(&doc));
    let (mut doc, _) = served();
    doc["openrpc"] = serde_json::json!("9.9.9");
    assert!(!v.is_valid(&doc));
    let (mut doc, _) = served();
    doc["servers_typo"] = Value::Null;
    assert!(!v.is_valid(&doc));
}
