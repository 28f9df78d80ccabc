//! The Prometheus server of `up --prometheus`: its configuration (written
//! for the testnet's actual ports), the alerting rules and dashboard the
//! project ships, installing Debian's `prometheus` when it is missing, and
//! starting it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cluster::{free_port, http_ok};
use crate::layout::{PrometheusInfo, Testnet, is_ours, log_tail, spawn_detached};

/// The alerting rules (`testnet/prometheus/alerts.yml`).
pub const ALERTS: &str = include_str!("../prometheus/alerts.yml");
/// The Grafana dashboard (`testnet/grafana/phalanx-dashboard.json`).
pub const DASHBOARD: &str = include_str!("../grafana/phalanx-dashboard.json");
/// Seconds between scrapes and between rule evaluations.
pub const SCRAPE_INTERVAL_S: u64 = 2;
/// How long Prometheus has to become ready.
const READY_PATIENCE: Duration = Duration::from_secs(60);

/// The scrape configuration for `net`: job `phalanx`, one target per node
/// with a `node` label.
pub fn scrape_config(net: &Testnet) -> String {
    let mut out = format!(
        "# Written by phalanx-testnet up for this testnet's ports.\n\
         global:\n  scrape_interval: {SCRAPE_INTERVAL_S}s\n  evaluation_interval: {SCRAPE_INTERVAL_S}s\n\
         rule_files:\n  - alerts.yml\n\
         scrape_configs:\n  - job_name: phalanx\n    static_configs:\n"
    );
    for n in &net.nodes {
        let target = n
            .metrics_url
            .trim_start_matches("http://")
            .trim_end_matches("/metrics");
        out.push_str(&format!(
            "      - targets: [\"{target}\"]\n        labels:\n          node: \"{}\"\n",
            n.index
        ));
    }
    out
}

/// Writes the config, rules and dashboard into `dir`.
pub fn write_files(dir: &Path, net: &Testnet) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("prometheus.yml"), scrape_config(net))?;
    std::fs::write(dir.join("alerts.yml"), ALERTS)?;
    std::fs::write(dir.join("phalanx-dashboard.json"), DASHBOARD)?;
    Ok(())
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

/// The `prometheus` binary, installing Debian's package when missing.
pub fn ensure_installed() -> Result<PathBuf> {
    if let Some(p) = on_path("prometheus") {
        return Ok(p);
    }
    eprintln!("prometheus not found; installing Debian's prometheus package");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let mut cmd = if root {
        Command::new("apt-get")
    } else {
        let mut c = Command::new("sudo");
        c.arg("apt-get");
        c
    };
    let ok = cmd
        .args(["install", "-y", "--no-install-recommends", "prometheus"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        bail!(
            "could not install prometheus; install it (`apt-get install prometheus`) and run again"
        );
    }
    on_path("prometheus").context("prometheus still not on the PATH after installing it")
}

/// Starts Prometheus for `net` under `DIR/prometheus` and waits until it
/// is ready.
pub fn start(dir: &Path, net: &Testnet) -> Result<PrometheusInfo> {
    let bin = ensure_installed()?;
    let pdir = dir.join("prometheus");
    write_files(&pdir, net)?;
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let config = pdir.join("prometheus.yml");
    let data = pdir.join("data");
    let log = pdir.join("prometheus.log");
    let pid = spawn_detached(
        &bin,
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", data.display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
            "--storage.tsdb.retention.time=1d",
        ],
        &log,
        &pdir,
    )?;
    let deadline = Instant::now() + READY_PATIENCE;
    while !http_ok(&format!("{url}/-/ready"), Duration::from_secs(2)) {
        if !is_ours(pid, &pdir) {
            bail!("prometheus exited:\n{}", log_tail(&log, 20));
        }
        if Instant::now() > deadline {
            bail!(
                "prometheus not ready within {} s:\n{}",
                READY_PATIENCE.as_secs(),
                log_tail(&log, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(PrometheusInfo {
        url,
        pid: Some(pid),
        dir: pdir,
    })
}
