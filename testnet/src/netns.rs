//! Real network faults for a local testnet (`up --netns`): one Linux
//! network namespace per node, each joined by a veth pair to a bridge in
//! the root namespace (which also gives this tool, the tests and
//! Prometheus a route to every node), and the faults on top: partitions
//! and one-way cuts as blackhole routes inside the namespaces, delay,
//! jitter and loss as a netem queue on a node's link.
//!
//! This module owns creating, changing and removing those namespaces,
//! links and routes, through iproute2's `ip` and `tc` (the tools an
//! operator would use, so every fault can be read back with them). It
//! needs root; without it, or without namespace support, it fails with
//! an error saying so. It never touches a namespace or link whose name
//! does not carry the testnet's prefix.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The first two octets of every testnet subnet; the third is per
/// testnet, the fourth per node (the bridge is `.254`).
const NET: [u8; 2] = [10, 213];

/// What `up --netns` created, as `testnet.json` records it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetnsInfo {
    /// Prefix of every namespace and link name (`phx` and 6 hex digits).
    pub prefix: String,
    /// The third octet of the testnet's subnet.
    pub subnet: u8,
    /// Nodes (one namespace each).
    pub nodes: usize,
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (iproute2 must be installed)"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

impl NetnsInfo {
    /// Node `i`'s namespace.
    pub fn ns(&self, i: usize) -> String {
        format!("{}-{i}", self.prefix)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    fn host_link(&self, i: usize) -> String {
        format!("{}v{i}", self.prefix)
    }

    /// Node `i`'s address.
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(NET[0], NET[1], self.subnet, i as u8 + 1)
    }

    /// Creates the bridge and one namespace per node for the testnet in
    /// `dir`.
    pub fn create(dir: &Path, nodes: usize) -> Result<NetnsInfo> {
        if nodes > 250 {
            bail!("--netns: at most 250 nodes");
        }
        // The effective uid, from /proc/self/status.
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let root = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0");
        if !root {
            bail!(
                "--netns needs root: network namespaces, veth links and routes are made with `ip`"
            );
        }
        let hash = phalanx_crypto::Digest::of(dir.as_os_str().as_encoded_bytes());
        let prefix = format!("phx{}", &hash.to_hex()[..6]);
        let used = ip(&["-o", "-4", "addr", "show"])?;
        let base = hash.0[6];
        let subnet = (0..=250u16)
            .map(|k| ((base as u16 + k) % 250 + 1) as u8)
            .find(|s| !used.contains(&format!("{}.{}.{s}.", NET[0], NET[1])))
            .context("no free 10.213.x.0/24 subnet")?;
        let info = NetnsInfo {
            prefix,
            subnet,
            nodes,
        };
        // Whatever a crashed earlier run of this directory left behind.
        info.destroy();
        let made = info.build();
        if made.is_err() {
            info.destroy();
        }
        made.map(|()| info)
    }

    fn build(&self) -> Result<()> {
        let br = self.bridge();
        ip(&["link", "add", &br, "type", "bridge"]).context(
            "creating a bridge (network namespaces need root and a kernel that allows them)",
        )?;
        let gw = format!("{}.{}.{}.254/24", NET[0], NET[1], self.subnet);
        ip(&["addr", "add", &gw, "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 0..self.nodes {
            let ns = self.ns(i);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let host = self.host_link(i);
            ip(&[
                "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &host, "master", &br])?;
            ip(&["link", "set", &host, "up"])?;
            let addr = format!("{}/24", self.node_ip(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// Removes every link, namespace and the bridge. Errors are ignored:
    /// what is gone is gone.
    pub fn destroy(&self) {
        for i in 0..self.nodes {
            // Deleting a link deletes its peer at once; a namespace's
            // links otherwise go only when the kernel gets round to it.
            let _ = ip(&["link", "del", &self.host_link(i)]);
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }

    /// Cuts every link between nodes of different `groups` (both ways),
    /// after healing what was cut before.
    pub fn partition(&self, groups: &[Vec<usize>]) -> Result<()> {
        self.heal()?;
        for (g, group) in groups.iter().enumerate() {
            for other in groups.iter().skip(g + 1) {
                for &a in group {
                    for &b in other {
                        self.cut(a, b)?;
                        self.cut(b, a)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Drops everything `from` sends to `to` (a one-way cut: `to`'s
    /// packets still reach `from`, so a TCP connection between them
    /// stalls rather than closing at once).
    pub fn cut(&self, from: usize, to: usize) -> Result<()> {
        self.check(from)?;
        self.check(to)?;
        let dest = format!("{}/32", self.node_ip(to));
        let out = Command::new("ip")
            .args(["-n", &self.ns(from), "route", "add", "blackhole", &dest])
            .output()
            .context("running ip")?;
        // Cut already: nothing to do.
        if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("File exists") {
            bail!(
                "cutting {from} -> {to}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&self) -> Result<()> {
        for i in 0..self.nodes {
            ip(&["-n", &self.ns(i), "route", "flush", "type", "blackhole"])?;
        }
        Ok(())
    }

    /// Puts a netem queue on node `i`'s link: `delay_ms` ± `jitter_ms`,
    /// `loss_percent` of packets dropped; all zero removes it.
    pub fn netem(&self, i: usize, delay_ms: u64, jitter_ms: u64, loss_percent: f64) -> Result<()> {
        self.check(i)?;
        let ns = self.ns(i);
        if delay_ms == 0 && jitter_ms == 0 && loss_percent == 0.0 {
            // Nothing set is not an error.
            let _ = run(
                "ip",
                &[
                    "netns", "exec", &ns, "tc", "qdisc", "del", "dev", "eth0", "root",
                ],
            );
            return Ok(());
        }
        let (d, j, l) = (
            format!("{delay_ms}ms"),
            format!("{jitter_ms}ms"),
            format!("{loss_percent}%"),
        );
        let r = run(
            "ip",
            &[
                "netns", "exec", &ns, "tc", "qdisc", "replace", "dev", "eth0", "root", "netem",
                "delay", &d, &j, "loss", &l,
            ],
        );
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("qdisc kind is unknown") => bail!(
                "this kernel has no netem queueing discipline (module sch_netem), so delay and loss cannot be set: {e}"
            ),
            Err(e) => Err(e),
        }
    }

    fn check(&self, i: usize) -> Result<()> {
        if i >= self.nodes {
            bail!("node {i}: the testnet has {} nodes", self.nodes);
        }
        Ok(())
    }
}

/// Parses `0,1/2,3` into groups of node indices.
pub fn parse_groups(s: &str) -> Result<Vec<Vec<usize>>> {
    let groups: Vec<Vec<usize>> = s
        .split('/')
        .map(|g| {
            g.split(',')
                .map(|i| {
                    i.trim()
                        .parse()
                        .with_context(|| format!("--groups {s:?}: {i:?} is not a node index"))
                })
                .collect()
        })
        .collect::<Result<_>>()?;
    if groups.len() < 2 {
        bail!("--groups {s:?}: at least two groups, separated by '/'");
    }
    let mut seen = std::collections::HashSet::new();
    for i in groups.iter().flatten() {
        if !seen.insert(*i) {
            bail!("--groups {s:?}: node {i} is in two groups");
        }
    }
    Ok(groups)
}

/// Parses `A->B`.
pub fn parse_oneway(s: &str) -> Result<(usize, usize)> {
    let (a, b) = s
        .split_once("->")
        .with_context(|| format!("--oneway {s:?}: expected FROM->TO"))?;
    let parse = |x: &str| -> Result<usize> {
        x.trim()
            .parse()
            .with_context(|| format!("--oneway {s:?}: {x:?} is not a node index"))
    };
    Ok((parse(a)?, parse(b)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn groups_and_cuts_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_groups("0,1/2,3").unwrap(),
            vec![vec![0, 1], vec![2, 3]]
        );
        assert_eq!(
            parse_groups("0/1,2,3").unwrap(),
            vec![vec![0], vec![1, 2, 3]]
        );
        assert!(parse_groups("0,1,2").is_err(), "one group");
        assert!(parse_groups("0,1/1,2").is_err(), "a node twice");
        assert!(parse_groups("0,x/1").is_err());
        assert_eq!(parse_oneway("0->1").unwrap(), (0, 1));
        assert!(parse_oneway("0-1").is_err());
    }
}
