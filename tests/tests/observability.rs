//! The testnet tool, the metrics, the shipped Prometheus configuration,
//! alert rules and Grafana dashboard, against a real testnet and a real
//! Prometheus server (Debian's `prometheus` package, which `.ci/run`
//! installs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use phalanx_tests::{PATIENCE, TestnetDown as Down, run, testnet_bin, testnet_ok as ok};
use serde_json::Value;

/// Runs `phalanx-testnet args` to completion: (exit code, stdout, stderr).
fn testnet(args: &[&str]) -> (Option<i32>, String, String) {
    run(&testnet_bin(), args)
}

fn http_get(url: &str, query: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(20)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.get(url);
    if let Some(q) = query {
        req = req.query("query", q);
    }
    let mut resp = req.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().expect("body"))
}

/// Evaluates `expr` now through Prometheus's HTTP API; returns the result
/// series (panics on a query error, which is a broken expression).
fn query(prom: &str, expr: &str) -> Vec<Value> {
    let (status, body) = http_get(&format!("{prom}/api/v1/query"), Some(expr));
    let v: Value = serde_json::from_str(&body).expect("Prometheus answers JSON");
    assert_eq!(status, 200, "query `{expr}` failed: {body}");
    assert_eq!(v["status"], "success", "query `{expr}`: {body}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// Waits until `expr` returns at least one series; false at the deadline.
fn returns_series(prom: &str, expr: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if !query(prom, expr).is_empty() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// An alert's expression with its comparisons turned into `bool` ones, so
/// it returns its series (as 0 or 1) whether or not the alert fires. The
/// rules write comparison operators between spaces.
fn as_signal(expr: &str) -> String {
    expr.split_whitespace()
        .flat_map(|tok| {
            if matches!(tok, "==" | "!=" | ">" | "<" | ">=" | "<=") {
                vec![tok, "bool"]
            } else {
                vec![tok]
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package) must be installed");
    {
        let mut input = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).expect("writing to promtool");
        }
    }
    let out = child.wait_with_output().expect("promtool output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

#[test]
fn a_testnet_under_load_feeds_every_dashboard_panel_and_alert_rule_in_a_real_prometheus() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("net");
    let d = dir.to_string_lossy().to_string();
    let _down = Down(dir.clone());
    let up = ok(&[
        "up",
        "--dir",
        &d,
        "--validators",
        "4",
        "--accounts",
        "200",
        "--checkpoint-interval",
        "10",
        "--prometheus",
        "--json",
    ]);
    let net: Value = serde_json::from_str(&up).expect("up --json prints testnet.json");
    let nodes = net["nodes"].as_array().unwrap().clone();
    assert_eq!(nodes.len(), 4);
    let prom = net["prometheus"]["url"].as_str().unwrap().to_string();
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("testnet.json")).unwrap()).unwrap();
    assert_eq!(on_disk["nodes"], net["nodes"]);

    // Load, with every acknowledged transfer committed on every node.
    let report = ok(&[
        "bench",
        "--dir",
        &d,
        "--duration",
        "5",
        "--rate",
        "200",
        "--json",
    ]);
    let r: Value = serde_json::from_str(report.trim()).expect("bench --json prints JSON");
    assert_eq!(r["submitted"], 1000, "{r}");
    assert_eq!(r["acknowledged"], 1000, "{r}");
    assert_eq!(r["committed"], 1000, "{r}");
    assert_eq!(r["all_committed_on_every_node"], true, "{r}");
    assert!(r["latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{r}");
    // The validators' CPU is read from /proc while the load runs.
    assert!(
        r["validators_cpu_us_per_transfer"].as_f64().unwrap() > 0.0,
        "{r}"
    );
    assert!(r["validators_cpu_cores"].as_f64().unwrap() > 0.0, "{r}");

    // promtool: the written config and the shipped rules check, and each
    // node's /metrics lints clean.
    for (what, file) in [
        ("config", dir.join("prometheus/prometheus.yml")),
        ("rules", repo_file("testnet/prometheus/alerts.yml")),
        ("config", repo_file("testnet/prometheus/prometheus.yml")),
    ] {
        let (good, out) = promtool(&["check", what, &file.to_string_lossy()], None);
        assert!(good, "promtool check {what} {}: {out}", file.display());
    }
    for n in &nodes {
        let (status, text) = http_get(n["metrics_url"].as_str().unwrap(), None);
        assert_eq!(status, 200);
        let (good, out) = promtool(&["check", "metrics"], Some(&text));
        assert!(
            good && out.trim().is_empty(),
            "promtool check metrics: {out}"
        );
        assert!(text.contains("phalanx_transactions_committed_total{status=\"applied\"}"));
    }

    // Every node is scraped.
    assert!(
        returns_series(&prom, "count(up{job=\"phalanx\"} == 1) == 4", PATIENCE),
        "Prometheus never scraped all four nodes"
    );

    // The checker catches a broken expression (a misspelled metric).
    assert!(query(&prom, "rate(phalanx_no_such_metric_total[1m])").is_empty());
    assert!(!returns_series(
        &prom,
        &as_signal("phalanx_mempool_transactionz > 0.9"),
        Duration::from_secs(1)
    ));

    // Every dashboard panel's every query returns series.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("testnet/grafana/phalanx-dashboard.json")).unwrap(),
    )
    .unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    let mut exprs = 0;
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            exprs += 1;
            assert!(
                returns_series(&prom, expr, PATIENCE),
                "panel `{}`: `{expr}` returns no series",
                p["title"]
            );
        }
    }
    assert!(exprs >= panels.len());

    // Every alert rule Prometheus loaded evaluates to series.
    let (_, rules) = http_get(&format!("{prom}/api/v1/rules"), None);
    let rules: Value = serde_json::from_str(&rules).unwrap();
    let mut names = Vec::new();
    for g in rules["data"]["groups"].as_array().unwrap() {
        for rule in g["rules"].as_array().unwrap() {
            let expr = rule["query"].as_str().unwrap();
            names.push(rule["name"].as_str().unwrap().to_string());
            let signal = as_signal(expr);
            assert_ne!(signal, expr, "alert `{}` has no comparison", rule["name"]);
            assert!(
                returns_series(&prom, &signal, PATIENCE),
                "alert `{}`: `{signal}` returns no series",
                rule["name"]
            );
        }
    }
    names.sort();
    assert_eq!(
        names,
        [
            "PhalanxEquivocation",
            "PhalanxExecutionMismatch",
            "PhalanxKeyUsedElsewhere",
            "PhalanxMempoolNearFull",
            "PhalanxNoCommit",
            "PhalanxNodeDown",
            "PhalanxPeerSendingInvalidMessages",
            "PhalanxProposalsRefused",
            "PhalanxRpcClientsRefused",
            "PhalanxTransactionsCensored",
            "PhalanxValidatorGraylisted",
            "PhalanxViewChangeStorm",
        ]
    );

    // Perturbations, seen by status and by the alerts.
    ok(&["pause", "--dir", &d, "--node", "2"]);
    let st: Value = serde_json::from_str(&ok(&["status", "--dir", &d, "--json"])).unwrap();
    assert_eq!(st["nodes"][2]["process"], "paused", "{st}");
    ok(&["resume", "--dir", &d, "--node", "2"]);
    ok(&["kill", "--dir", &d, "--node", "3"]);
    let st: Value = serde_json::from_str(&ok(&["status", "--dir", &d, "--json"])).unwrap();
    assert_eq!(st["nodes"][3]["process"], "stopped", "{st}");
    assert_eq!(st["nodes"][2]["process"], "running", "{st}");
    assert!(
        returns_series(
            &prom,
            "ALERTS{alertname=\"PhalanxNodeDown\",alertstate=\"firing\",node=\"3\"}",
            PATIENCE
        ),
        "PhalanxNodeDown never fired for the killed node"
    );
    let out = ok(&["restart", "--dir", &d, "--node", "3"]);
    assert!(out.contains("node 3 restarted"), "{out}");
    let st: Value = serde_json::from_str(&ok(&["status", "--dir", &d, "--json"])).unwrap();
    for n in st["nodes"].as_array().unwrap() {
        assert_eq!(n["process"], "running", "{st}");
        assert!(n["height"].as_u64().unwrap() > 0, "{st}");
    }

    // A node out of range is a clear error.
    let (code, _, err) = testnet(&["kill", "--dir", &d, "--node", "9"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("no node 9"), "{err}");

    // down stops everything it started, and nothing is left listening.
    let out = ok(&["down", "--dir", &d]);
    assert_eq!(out.matches("stopped").count(), 5, "{out}");
    for n in &nodes {
        let url = n["rpc_url"].as_str().unwrap();
        let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}

#[test]
fn bench_runs_against_the_nodes_that_are_up_and_checks_commits_on_those() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("net");
    let d = dir.to_string_lossy().to_string();
    let _down = Down(dir.clone());
    ok(&["up", "--dir", &d, "--validators", "4", "--accounts", "100"]);
    ok(&["kill", "--dir", &d, "--node", "3"]);
    let report = ok(&[
        "bench",
        "--dir",
        &d,
        "--duration",
        "4",
        "--rate",
        "200",
        "--json",
    ]);
    let r: Value = serde_json::from_str(report.trim()).expect("bench --json prints JSON");
    assert_eq!(r["validators"], 4, "{r}");
    assert_eq!(r["nodes_up"], serde_json::json!([0, 1, 2]), "{r}");
    assert_eq!(r["nodes_down"], serde_json::json!([3]), "{r}");
    assert_eq!(r["submitted"], 800, "{r}");
    assert_eq!(r["acknowledged"], 800, "{r}");
    assert_eq!(r["committed"], 800, "{r}");
    // Checked on the three live nodes, each of which committed them all.
    assert_eq!(r["missing_per_node"], serde_json::json!([0, 0, 0]), "{r}");
    assert_eq!(r["all_committed_on_every_node"], true, "{r}");
    assert!(r["blocks_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["transfers_per_block"].as_f64().unwrap() > 0.0, "{r}");

    // With every node down there is nothing to measure: a clear error.
    ok(&["down", "--dir", &d]);
    let (code, _, err) = testnet(&["bench", "--dir", &d, "--duration", "1", "--json"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("no node of the testnet"), "{err}");
}
