//! Linux network namespaces for partition tests: one per node plus a hub
//! holding a bridge (and the test's clients), so that node-to-node traffic
//! can be cut with blackhole routes while the hub still reaches every node.
//! Only addresses inside the namespaces (10.99.0.0/24) are used.
//!
//! A test that needs them reruns its own test binary inside the hub
//! (`Namespaces::run_in_hub`); creating namespaces needs privileges, so a
//! caller skips (with a message) when `Namespaces::create` fails.

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Output};

/// How many node namespaces there are (the example cluster's size).
const NODES: usize = 3;

/// The address of node `n` (1-based) inside its own namespace.
pub fn netns_ip(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 99, 0, n as u8))
}

/// The hub and one namespace per node, `{prefix}-hub` and `{prefix}-N`.
/// Deleted (with whatever still runs in them) on drop.
pub struct Namespaces {
    pub prefix: String,
    created: Vec<String>,
}

impl Namespaces {
    pub fn create() -> Result<Namespaces, String> {
        let prefix = format!("stl{}", std::process::id());
        let mut namespaces = Namespaces { prefix: prefix.clone(), created: Vec::new() };
        let hub = namespaces.hub();
        namespaces.add(&hub)?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "addr", "add", "10.99.0.100/24", "dev", "br0"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        for n in 1..=NODES {
            let node = format!("{prefix}-{n}");
            namespaces.add(&node)?;
            let port = format!("v{n}");
            ip(&["-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &node])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &node, "addr", "add", &format!("{}/24", netns_ip(n)), "dev", "eth0"])?;
            ip(&["-n", &node, "link", "set", "eth0", "up"])?;
            ip(&["-n", &node, "link", "set", "lo", "up"])?;
        }
        Ok(namespaces)
    }

    pub fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    fn add(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        self.created.push(name.to_string());
        Ok(())
    }

    /// Runs the (ignored) test `test` of this test binary inside the hub,
    /// with the namespaces' prefix in the environment variable `var`.
    pub fn run_in_hub(&self, test: &str, var: &str) -> Output {
        let this_binary = std::env::current_exe().unwrap();
        Command::new("ip")
            .args(["netns", "exec", &self.hub()])
            .arg(this_binary)
            .args(["--exact", test, "--ignored", "--nocapture", "--test-threads=1"])
            .env(var, &self.prefix)
            .output()
            .expect("run the test inside the hub namespace")
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.created {
            // Processes the test started that outlived the inner test.
            let pids = Command::new("ip").args(["netns", "pids", name]).output();
            for pid in
                pids.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default().lines()
            {
                let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            }
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Drops (or, with `heal`, restores) traffic between node `minority`
/// (1-based) and the others, in the namespaces named with `prefix`.
pub fn partition(prefix: &str, minority: usize, heal: bool) {
    let action = if heal { "del" } else { "add" };
    for other in (1..=NODES).filter(|&n| n != minority) {
        for (from, to) in [(minority, other), (other, minority)] {
            let (ns, dest) = (format!("{prefix}-{from}"), format!("{}/32", netns_ip(to)));
            ip(&["-n", &ns, "route", action, "blackhole", &dest]).unwrap();
        }
    }
}

/// Runs `ip ARGS`, returning its stderr on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip").args(args).output().map_err(|e| format!("ip {args:?}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
}
