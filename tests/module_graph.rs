//! The dependency direction of `src/` (ARCHITECTURE section 1, the layout
//! list in `src/lib.rs`): no import cycle between the crate's top-level
//! modules, and the protocol-neutral core below the wire protocols.
//!
//! Reads the sources: every `crate::MODULE` path (including grouped
//! `crate::{a, b}` imports) in a module's non-test code is an edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the top-level modules its non-test code names.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let relative = path.strip_prefix(&src).unwrap();
            let first = relative.components().next().unwrap().as_os_str().to_string_lossy().to_string();
            let module = first.trim_end_matches(".rs").to_string();
            // Test-only files (`tests.rs` modules, `testing.rs` support).
            let file = path.file_name().unwrap().to_string_lossy();
            let test_only = file == "tests.rs" || file == "testing.rs";
            if ["lib", "main"].contains(&module.as_str())
                || test_only
                || path.extension().is_none_or(|e| e != "rs")
            {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
            let edges = graph.entry(module.clone()).or_default();
            for target in crate_paths(code) {
                if target != module {
                    edges.insert(target);
                }
            }
        }
    }
    graph
}

/// The first segment of every `crate::` path in `code`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let preceded_by_ident =
            code[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_');
        if preceded_by_ident {
            continue; // `starling_cluster::...` is another crate
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of a grouped import: the first segment of
            // each depth-0 path (`{a::{b, c}, d::e}` names a and d).
            let mut depth = 0;
            let mut name = String::new();
            let mut in_tail = false;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        if !name.is_empty() && name != "self" {
                            found.insert(std::mem::take(&mut name));
                        }
                        in_tail = false;
                    }
                    ':' if depth == 0 => in_tail = true,
                    c if depth == 0 && !in_tail && (c.is_alphanumeric() || c == '_') => name.push(c),
                    _ => {}
                }
            }
            if !name.is_empty() && name != "self" {
                found.insert(name);
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_modules_of_src_import_each_other_without_a_cycle() {
    let graph = module_graph();
    assert!(graph.len() >= 15, "found only {:?}", graph.keys());
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}\n{graph:#?}", cycle.join(" -> "));
    }
}

#[test]
fn the_core_sits_below_the_wire_protocols() {
    let graph = module_graph();
    let allowed: &[(&str, &[&str])] = &[
        ("protocol", &[]),
        ("rooms", &["protocol"]),
        // Reading the cluster's PEM files and checking certificate names.
        ("config", &["protocol", "tls", "certs"]),
        ("replicate", &["rooms", "protocol"]),
        ("fanout", &["replicate", "rooms", "protocol", "config", "telemetry"]),
        ("forward", &["fanout", "replicate", "rooms", "protocol", "telemetry"]),
        ("service", &["forward", "fanout", "replicate", "rooms", "protocol", "config", "telemetry"]),
    ];
    for (module, may_use) in allowed {
        let uses = graph.get(*module).unwrap_or_else(|| panic!("module {module} not found"));
        let extra: Vec<_> = uses.iter().filter(|u| !may_use.contains(&u.as_str())).collect();
        assert!(extra.is_empty(), "{module} must not depend on {extra:?}");
    }
}

#[test]
fn the_reader_of_imports_sees_grouped_and_nested_paths() {
    let code = "use crate::{fanout::{Hub, Draft}, protocol::RoomName};\nlet x = crate::config::load();\nstarling_cluster::codec::encode();";
    let found: Vec<_> = crate_paths(code).into_iter().collect();
    assert_eq!(found, vec!["config", "fanout", "protocol"]);
}
