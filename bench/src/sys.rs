//! Reading a server's memory and CPU time from /proc, and `kill -9`.

use anyhow::Context;

/// The resident set size of a process, in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context("no VmRSS")?;
    Ok(kib * 1024)
}

/// User + system CPU time of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).context("bad stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// Summed RSS of every live process in `pids` (a dead one counts 0).
pub fn total_rss(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| rss_bytes(p).ok()).sum()
}

/// Summed CPU seconds of every live process in `pids`.
pub fn total_cpu(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&p| cpu_seconds(p).ok()).sum()
}

/// Parses a comma-separated pid list (empty string: none).
pub fn parse_pids(list: &str) -> anyhow::Result<Vec<u32>> {
    list.split(',').filter(|s| !s.trim().is_empty()).map(|s| Ok(s.trim().parse()?)).collect()
}

/// Sends SIGKILL to `pid`.
pub fn kill9(pid: u32) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status()?;
    anyhow::ensure!(status.success(), "kill -9 {pid} failed");
    Ok(())
}

/// Polls until `pids` together use under 5% of a core over 500 ms, or
/// `patience` runs out; returns how long it waited.
pub async fn quiesce(pids: &[u32], patience: std::time::Duration) -> std::time::Duration {
    let started = std::time::Instant::now();
    let mut before = total_cpu(pids);
    while started.elapsed() < patience {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let now = total_cpu(pids);
        if now - before < 0.025 {
            break;
        }
        before = now;
    }
    started.elapsed()
}
