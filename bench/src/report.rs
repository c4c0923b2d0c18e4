//! The comparison tables: reads `DIR/<peer>/<scenario>.json` as written by
//! `bench/compare.sh` and prints Markdown, every figure next to the peers
//! measured in the same run, with the ratios the goals are stated in: one
//! table for the Starling-protocol peers (issue 6), one for the Pusher
//! peers (issue 13), each printed when the run measured any of its peers.

use std::path::Path;

use serde_json::Value;

/// Peers in column order: directory name and column title.
pub const PEERS: [(&str, &str); 5] = [
    ("starling-1", "Starling 1 node"),
    ("socketio-1", "Socket.IO 1 proc"),
    ("raw", "raw tokio-tungstenite"),
    ("starling-3", "Starling 3 nodes"),
    ("socketio-3-redis", "Socket.IO 3 + Redis"),
];

/// The Pusher peers in column order.
pub const PUSHER_PEERS: [(&str, &str); 4] = [
    ("starling-pusher-1", "Starling-Pusher 1 node"),
    ("sockudo-1", "Sockudo 1 proc"),
    ("starling-pusher-3", "Starling-Pusher 3 nodes"),
    ("sockudo-3-redis", "Sockudo 3 + Redis"),
];

/// The Pusher table's ratio columns: title, numerator and denominator
/// (indices into [`PUSHER_PEERS`]).
const PUSHER_RATIOS: [(&str, usize, usize); 2] = [("SP1 / SK1", 0, 1), ("SP3 / SK3+R", 2, 3)];

/// One row: title, scenario file, how to read the figure, and whether
/// higher is better (for the ratio wording).
struct Row {
    title: &'static str,
    scenario: &'static str,
    figure: fn(&Value) -> Option<f64>,
    higher_is_better: bool,
}

fn best(v: &Value, key: &str) -> Option<f64> {
    v["best"][key].as_f64()
}

fn first_step(v: &Value) -> &Value {
    &v["steps"][0]
}

const ROWS: &[Row] = &[
    Row {
        title: "idle: bytes per connection (RSS slope)",
        scenario: "idle",
        figure: |v| v["bytes_per_connection_slope"].as_f64(),
        higher_is_better: false,
    },
    Row {
        title: "fan-out 1x10k: max deliveries/s",
        scenario: "fanout-1x10000",
        figure: |v| best(v, "deliveries_per_second"),
        higher_is_better: true,
    },
    Row {
        title: "fan-out 1x10k: p99 ms at max",
        scenario: "fanout-1x10000",
        figure: |v| v["best"]["latency_ms"]["p99"].as_f64(),
        higher_is_better: false,
    },
    Row {
        title: "fan-out 1000x10: max deliveries/s",
        scenario: "fanout-1000x10",
        figure: |v| best(v, "deliveries_per_second"),
        higher_is_better: true,
    },
    Row {
        title: "fan-out 1000x10: p99 ms at max",
        scenario: "fanout-1000x10",
        figure: |v| v["best"]["latency_ms"]["p99"].as_f64(),
        higher_is_better: false,
    },
    Row {
        title: "fan-out 100x100: max deliveries/s",
        scenario: "fanout-100x100",
        figure: |v| best(v, "deliveries_per_second"),
        higher_is_better: true,
    },
    Row {
        title: "fan-out 100x100: p99 ms at max",
        scenario: "fanout-100x100",
        figure: |v| v["best"]["latency_ms"]["p99"].as_f64(),
        higher_is_better: false,
    },
    Row {
        title: "20k deliveries/s: p50 ms",
        scenario: "latency-20k",
        figure: |v| first_step(v)["latency_ms"]["p50"].as_f64(),
        higher_is_better: false,
    },
    Row {
        title: "20k deliveries/s: p99 ms",
        scenario: "latency-20k",
        figure: |v| first_step(v)["latency_ms"]["p99"].as_f64(),
        higher_is_better: false,
    },
    Row {
        title: "20k deliveries/s: p999 ms",
        scenario: "latency-20k",
        figure: |v| first_step(v)["latency_ms"]["p999"].as_f64(),
        higher_is_better: false,
    },
    Row {
        title: "20k deliveries/s: max ms",
        scenario: "latency-20k",
        figure: |v| first_step(v)["latency_ms"]["max"].as_f64(),
        higher_is_better: false,
    },
    Row {
        title: "20k deliveries/s: server CPU µs/delivery",
        scenario: "latency-20k",
        figure: |v| first_step(v)["server_cpu_us_per_delivery"].as_f64(),
        higher_is_better: false,
    },
    Row {
        title: "20k deliveries/s: missing",
        scenario: "latency-20k",
        figure: |v| first_step(v)["missing"].as_f64(),
        higher_is_better: false,
    },
    Row {
        title: "cross-node 20k/s: p99 ms (members on other nodes)",
        scenario: "cross-other",
        figure: |v| first_step(v)["latency_ms"]["p99"].as_f64(),
        higher_is_better: false,
    },
    Row {
        title: "cross-node 20k/s: server CPU µs/delivery",
        scenario: "cross-other",
        figure: |v| first_step(v)["server_cpu_us_per_delivery"].as_f64(),
        higher_is_better: false,
    },
    Row {
        title: "join+leave: operations/s",
        scenario: "joins",
        figure: |v| v["operations_per_second"].as_f64(),
        higher_is_better: true,
    },
    Row {
        title: "join+leave: p99 reply ms",
        scenario: "joins",
        figure: |v| v["reply_latency_ms"]["p99"].as_f64(),
        higher_is_better: false,
    },
    Row {
        title: "connect churn: connections/s",
        scenario: "churn",
        figure: |v| v["connections_per_second"].as_f64(),
        higher_is_better: true,
    },
    Row {
        title: "kill -9 of a node: deliveries missing",
        scenario: "kill",
        figure: |v| first_step(v)["missing"].as_f64(),
        higher_is_better: false,
    },
    Row {
        title: "kill -9 of a node: publishes refused (sender told)",
        scenario: "kill",
        figure: |v| first_step(v)["publishes_refused"].as_f64(),
        higher_is_better: false,
    },
    Row {
        title: "kill -9 of a node: recovery ms",
        scenario: "kill",
        figure: |v| first_step(v)["kill"]["recovery_ms"].as_f64(),
        higher_is_better: false,
    },
];

fn load(dir: &Path, peer: &str, scenario: &str) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(peer).join(format!("{scenario}.json"))).ok()?;
    serde_json::from_str(&text).ok()
}

fn figure(dir: &Path, peer: &str, row: &Row) -> Option<f64> {
    load(dir, peer, row.scenario).as_ref().and_then(row.figure)
}

/// For a step search in which no step met the bound: the lowest rate tried.
fn below_every_step(dir: &Path, peer: &str, row: &Row) -> Option<f64> {
    if !row.title.ends_with("max deliveries/s") {
        return None;
    }
    let run = load(dir, peer, row.scenario)?;
    run["steps"].as_array()?.iter().filter_map(|s| s["deliveries_per_second"].as_f64()).reduce(f64::min)
}

fn show(x: Option<f64>) -> String {
    match x {
        None => "–".into(),
        Some(x) if x.abs() >= 100.0 => format!("{:.0}", x)
            .as_bytes()
            .rchunks(3)
            .rev()
            .map(|c| std::str::from_utf8(c).expect("ascii"))
            .collect::<Vec<_>>()
            .join(","),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}x", a / b),
        _ => "–".into(),
    }
}

/// The comparison tables and the goal checks, as Markdown.
pub fn markdown(dir: &Path) -> anyhow::Result<String> {
    anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    let measured = |peers: &[(&str, &str)]| peers.iter().any(|(peer, _)| dir.join(peer).is_dir());
    let mut out = String::new();
    if measured(&PEERS) || !measured(&PUSHER_PEERS) {
        out.push_str(&starling_table(dir));
    }
    if measured(&PUSHER_PEERS) {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&pusher_table(dir));
    }
    Ok(out)
}

/// One cell: the figure, or for a search that never passed "< lowest rate".
fn cell(dir: &Path, peer: &str, row: &Row, value: Option<f64>) -> String {
    match value {
        None => {
            below_every_step(dir, peer, row).map_or_else(|| show(None), |x| format!("< {}", show(Some(x))))
        }
        Some(_) => show(value),
    }
}

/// Starling-Pusher against Sockudo, one node and three, and the rows where
/// Starling is behind (issue 13's goal is to be ahead on every row).
fn pusher_table(dir: &Path) -> String {
    let mut out = String::from("| measure (Pusher protocol) |");
    for (_, title) in PUSHER_PEERS {
        out.push_str(&format!(" {title} |"));
    }
    for (title, _, _) in PUSHER_RATIOS {
        out.push_str(&format!(" {title} |"));
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(PUSHER_PEERS.len() + PUSHER_RATIOS.len()));
    out.push('\n');
    let mut behind = Vec::new();
    for row in ROWS {
        let values: Vec<Option<f64>> = PUSHER_PEERS.iter().map(|(peer, _)| figure(dir, peer, row)).collect();
        let cells: Vec<String> =
            values.iter().zip(PUSHER_PEERS).map(|(v, (peer, _))| cell(dir, peer, row, *v)).collect();
        if cells.iter().all(|c| c == "–") {
            continue;
        }
        out.push_str(&format!("| {} |", row.title));
        for cell in cells {
            out.push_str(&format!(" {cell} |"));
        }
        for (title, a, b) in PUSHER_RATIOS {
            out.push_str(&format!(" {} |", ratio(values[a], values[b])));
            if let (Some(s), Some(k)) = (values[a], values[b]) {
                let worse = if row.higher_is_better { s < k } else { s > k };
                if worse {
                    behind.push(format!("{} ({title}: {} vs {})", row.title, show(Some(s)), show(Some(k))));
                }
            }
        }
        out.push('\n');
    }
    out.push_str("\nSP = Starling serving a Pusher app, SK = Sockudo; ratios are Starling's figure divided by Sockudo's (above 1 is better where higher is better, below 1 for the others). \"join+leave\" rows are presence subscribe + unsubscribe (the unsubscribe's answer is the pong to a ping sent after it). \"< N\": no step of the search met the bound; N is the lowest rate tried.\n\n");
    if behind.is_empty() {
        out.push_str("Goal (issue 13), from this run: ahead of Sockudo on every row measured.\n");
    } else {
        out.push_str(
            "Goal (issue 13), from this run: ahead of Sockudo on every row: **NOT met**; behind on:\n",
        );
        for line in behind {
            out.push_str(&format!("- {line}\n"));
        }
    }
    out
}

/// The Starling-protocol table (issue 6) and its goal checks.
fn starling_table(dir: &Path) -> String {
    let mut out = String::new();
    out.push_str("| measure |");
    for (_, title) in PEERS {
        out.push_str(&format!(" {title} |"));
    }
    out.push_str(" S1 / SIO1 | S1 / raw | S3 / SIO3+R |\n|---|");
    out.push_str(&"---:|".repeat(PEERS.len() + 3));
    out.push('\n');
    for row in ROWS {
        let values: Vec<Option<f64>> = PEERS.iter().map(|(peer, _)| figure(dir, peer, row)).collect();
        out.push_str(&format!("| {} |", row.title));
        for (v, (peer, _)) in values.iter().zip(PEERS) {
            out.push_str(&format!(" {} |", cell(dir, peer, row, *v)));
        }
        out.push_str(&format!(
            " {} | {} | {} |\n",
            ratio(values[0], values[1]),
            ratio(values[0], values[2]),
            ratio(values[3], values[4])
        ));
    }
    out.push_str("\nRatios are Starling's figure divided by the peer's: above 1 is better for rows where higher is better (");
    let better: Vec<&str> = ROWS.iter().filter(|r| r.higher_is_better).map(|r| r.title).collect();
    out.push_str(&better.join("; "));
    out.push_str("), below 1 is better for the others. \"< N\": no step of the search met the bound (p99 within the bound, nothing lost); N is the lowest rate tried.\n\n");
    out.push_str(&goals(dir));
    out
}

fn goals(dir: &Path) -> String {
    let get = |peer: &str, title: &str| {
        ROWS.iter().find(|r| r.title == title).and_then(|row| figure(dir, peer, row))
    };
    let mut lines = vec!["Goals (issue 6), from this run:".to_string()];
    let mut check = |what: String, pass: Option<bool>| {
        let mark = match pass {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        lines.push(format!("- {what}: **{mark}**"));
    };
    let idle = "idle: bytes per connection (RSS slope)";
    let (s, sio) = (get("starling-1", idle), get("socketio-1", idle));
    check(
        format!("idle memory ≤ 1/3 of Socket.IO and < 10 KiB ({} vs {} bytes)", show(s), show(sio)),
        s.zip(sio).map(|(s, sio)| s * 3.0 <= sio && s < 10_240.0),
    );
    for shape in ["1x10k", "1000x10", "100x100"] {
        let title = ROWS
            .iter()
            .find(|r| r.title == format!("fan-out {shape}: max deliveries/s"))
            .map(|r| r.title)
            .expect("row");
        let (s, sio, raw) = (get("starling-1", title), get("socketio-1", title), get("raw", title));
        check(
            format!(
                "fan-out {shape} per server core ≥ 3x Socket.IO and ≥ 70% of raw ({} / {} / {})",
                show(s),
                show(sio),
                show(raw)
            ),
            match (s, sio, raw) {
                (Some(s), Some(sio), Some(raw)) => Some(s >= 3.0 * sio && s >= 0.7 * raw),
                _ => None,
            },
        );
    }
    let mut all = Some(true);
    for row in ROWS.iter().filter(|r| {
        r.scenario.starts_with("fanout")
            || r.scenario == "latency-20k"
            || r.scenario == "cross-other"
            || r.scenario == "joins"
    }) {
        if row.title.contains("missing") || row.title.contains("CPU") {
            continue;
        }
        let pass = figure(dir, "starling-3", row).zip(figure(dir, "socketio-3-redis", row)).map(|(s, r)| {
            if row.higher_is_better {
                s > r
            } else {
                s < r
            }
        });
        all = match (all, pass) {
            (Some(a), Some(p)) => Some(a && p),
            _ => None,
        };
    }
    check("3-node Starling beats Socket.IO x3 + Redis on throughput and p99 in every scenario".into(), all);
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, peer: &str, scenario: &str, value: Value) {
        std::fs::create_dir_all(dir.join(peer)).unwrap();
        std::fs::write(dir.join(peer).join(format!("{scenario}.json")), value.to_string()).unwrap();
    }

    /// A run of only the Pusher peers prints only the Pusher table, with
    /// each ratio from the same row, and names the rows where Starling is
    /// behind Sockudo.
    #[test]
    fn pusher_table_lists_the_rows_where_starling_is_behind() {
        let dir = std::env::temp_dir().join(format!("starling-bench-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write(&dir, "starling-pusher-1", "idle", serde_json::json!({"bytes_per_connection_slope": 20_000.0}));
        write(&dir, "sockudo-1", "idle", serde_json::json!({"bytes_per_connection_slope": 150_000.0}));
        write(&dir, "starling-pusher-1", "joins", serde_json::json!({"operations_per_second": 1000.0}));
        write(&dir, "sockudo-1", "joins", serde_json::json!({"operations_per_second": 2000.0}));
        let table = markdown(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!table.contains("Socket.IO"), "{table}");
        assert!(
            table.contains(
                "| idle: bytes per connection (RSS slope) | 20,000 | 150,000 | – | – | 0.13x | – |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| join+leave: operations/s | 1,000 | 2,000 | – | – | 0.50x | – |"),
            "{table}"
        );
        assert!(table.contains("- join+leave: operations/s (SP1 / SK1: 1,000 vs 2,000)"), "{table}");
        assert!(!table.contains("- idle"), "{table}");
    }
}
