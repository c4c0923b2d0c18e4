//! `scripts/setup.sh` on a machine without Node, npm or Chromium (and not
//! allowed to install them): each missing part is one line, the run goes
//! on and succeeds; in CI (`CI_REQUIRE_JS=1`) the same run fails.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A folder of links to the few commands the script needs, and nothing
/// else (no node, npm, python3, apt-get, sudo or rustup).
fn bare_path() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("starling-setup-path-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let search = std::env::var("PATH").unwrap();
    for tool in
        ["bash", "cat", "cut", "dirname", "grep", "id", "mktemp", "rm", "sha256sum", "tail", "tr", "tee"]
    {
        let found = std::env::split_paths(&search)
            .map(|folder| folder.join(tool))
            .find(|path| path.is_file())
            .unwrap_or_else(|| panic!("{tool} is not on PATH"));
        let link = dir.join(tool);
        if !link.exists() {
            std::os::unix::fs::symlink(found, link).unwrap();
        }
    }
    dir
}

fn run_setup(path: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let output = Command::new(path.join("bash"))
        .arg("scripts/setup.sh")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_clear()
        .env("PATH", path)
        .env("HOME", std::env::temp_dir())
        .env("CHROMIUM_BIN", "/nonexistent/chromium")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    (output.status.code(), text(output.stdout), text(output.stderr))
}

#[test]
fn setup_reports_each_part_it_cannot_set_up_in_one_line_and_fails_only_where_ci_requires_it() {
    let path = bare_path();
    let (code, _, _) = run_setup(&path, &["--check"], &[]);
    assert_eq!(code, Some(1), "--check: something is missing");

    let (code, stdout, stderr) = run_setup(&path, &[], &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let line = |start: &str| stdout.lines().filter(|l| l.starts_with(start)).count();
    assert_eq!(
        line("setup: skipped: node or npm is missing: the JS client and Pusher tests skip"),
        1,
        "{stdout}"
    );
    assert_eq!(line("setup: skipped: chromium is missing"), 1, "{stdout}");
    assert_eq!(line("setup: not root (or no apt-get): not installing"), 1, "{stdout}");
    assert!(!stdout.contains("npm ci"), "{stdout}");

    let (code, stdout, stderr) = run_setup(&path, &[], &[("CI_REQUIRE_JS", "1")]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("setup: FAILED: node or npm is missing (CI_REQUIRE_JS=1)"), "{stderr}");
    assert!(stderr.contains("setup: FAILED: chromium is missing"), "{stderr}");
    std::fs::remove_dir_all(path).ok();
}
