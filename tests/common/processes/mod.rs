//! Real `starling` processes (the binary Cargo built for these tests): one
//! node, a cluster of them, and Linux network namespaces to partition it.
//! Every test that starts the binary uses this harness.
//!
//! A node is placed with `STARLING_` variables only (data dir, listen
//! addresses on free loopback ports, seeds, and peer TLS from the test CA of
//! `certs`), so its config file (an example of `config/cluster/`, or text a
//! test writes) is run as written, tests run in parallel, and none collides
//! with a dev cluster on the default ports. Every process is killed
//! (SIGKILL) when its handle is dropped, passed or not; a failing test
//! prints each node's recent log lines.
//!
//! # Layout
//!
//! - [`node`]: one process: `NodeSpec` (how to start it), `NodeProcess`
//!   (its output, signals, start and exit), free ports, temp dirs.
//! - [`cluster`]: `ProcessCluster`, N nodes: start, kill, pause, restart,
//!   terminate, and the cluster's view (leader, presence) over the API.
//! - [`netns`]: namespaces with a bridge, and blackhole routes that cut a
//!   node off.
//!
//! Waiting is `eventually` (a condition polled until a deadline), never a
//! sleep; HTTP is `http_get` and `metric`, which answer `None` or 0 for a
//! node that is killed or paused.

pub mod cluster;
pub mod netns;
pub mod node;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

// Each test binary uses a part of the harness.
#[allow(unused_imports)]
pub use cluster::{ProcessCluster, Received, Secrets};
#[allow(unused_imports)]
pub use netns::{netns_ip, partition, Namespaces};
#[allow(unused_imports)]
pub use node::{example_config, free_ports, NodeProcess, NodeSpec, Placement, Ports, Signal, TestDir, BIN};

/// How long the harness waits for a process or cluster condition (a node
/// starting, a leader agreed) before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);
/// How long one HTTP exchange with a node may take (a paused node never answers).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// Polls `check` until it returns `Ok`, or fails the test after `limit`
/// with the last reason it gave.
pub async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let reason = match check().await {
            Ok(value) => return value,
            Err(reason) => reason,
        };
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting until {what}: {reason}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One `GET` with a bearer key: the status and the body as JSON (`Null`
/// when it is not JSON); `None` when nothing answers in `HTTP_TIMEOUT`.
pub async fn http_get(addr: SocketAddr, path: &str, api_key: &str) -> Option<(u16, Value)> {
    let response = api_request(addr, path, api_key).await?;
    Some((response.status, serde_json::from_str(&response.body).unwrap_or(Value::Null)))
}

/// The sum of a Prometheus series' samples whose labels contain `labels`
/// (e.g. `reason="tls"`), read from `/metrics`; 0 when absent or when the
/// node does not answer.
pub async fn metric(addr: SocketAddr, api_key: &str, name: &str, labels: &str) -> f64 {
    let text = api_request(addr, "/metrics", api_key).await.map(|response| response.body).unwrap_or_default();
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn api_request(addr: SocketAddr, path: &str, api_key: &str) -> Option<super::HttpResponse> {
    let auth = format!("Bearer {api_key}");
    super::try_http(addr, "GET", path, &[("Authorization", &auth)], "", HTTP_TIMEOUT).await
}
