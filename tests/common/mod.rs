//! Helpers shared by the integration tests: run the real `covf` binary and, when it does not do what a test
//! expects, fail with the whole context (the command, its directory and the files in it, stdout, stderr).

#![allow(dead_code)] // each test binary uses its own subset of the helpers

use std::path::Path;
use std::process::{Command, Output};

pub const FMNIST: &str = "/usr/share/datasets/fashion-mnist";

pub fn covf(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_covf"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("covf binary runs")
}

/// Runs covf and requires success.
pub fn covf_ok(args: &[&str], cwd: &Path) -> Output {
    let o = covf(args, cwd);
    assert!(o.status.success(), "covf failed\n{}", context(args, cwd, &o));
    o
}

/// Runs covf and requires exit code `code` (2: bad input).
pub fn covf_code(args: &[&str], cwd: &Path, code: i32) -> Output {
    let o = covf(args, cwd);
    assert_eq!(
        o.status.code(),
        Some(code),
        "covf should exit with {code}\n{}",
        context(args, cwd, &o)
    );
    o
}

/// stdout and stderr together, for assertions on messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Everything a reader of a failed test needs: what ran where, what it left there, what it said.
pub fn context(args: &[&str], cwd: &Path, o: &Output) -> String {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$*?;&|<>()".contains(c)) {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a.to_string()
            }
        })
        .collect();
    format!(
        "command: covf {}\ncwd: {}\nexit: {}\nfiles:\n{}--- stdout ---\n{}\n--- stderr ---\n{}",
        quoted.join(" "),
        cwd.display(),
        o.status,
        listing(cwd),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The files under `dir` (depth ≤ 4, at most 80 lines), with sizes.
fn listing(dir: &Path) -> String {
    fn walk(root: &Path, dir: &Path, depth: usize, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
            if p.is_dir() {
                out.push(format!("  {rel}/"));
                if depth < 4 {
                    walk(root, &p, depth + 1, out);
                }
            } else {
                let size = p.metadata().map(|m| m.len()).unwrap_or(0);
                out.push(format!("  {rel} ({size} B)"));
            }
        }
    }
    let mut lines = Vec::new();
    walk(dir, dir, 1, &mut lines);
    let more = lines.len().saturating_sub(80);
    lines.truncate(80);
    if more > 0 {
        lines.push(format!("  … and {more} more"));
    }
    lines.iter().map(|l| format!("{l}\n")).collect()
}

pub fn require_fmnist() {
    assert!(
        Path::new(FMNIST).is_dir(),
        "Fashion-MNIST is missing: `apt-get install -y dataset-fashion-mnist` (.ci/run does this)"
    );
}
