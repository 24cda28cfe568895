//! Helpers shared by the integration tests: run the real `covf` binary, read its output, require the data.

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

/// stdout and stderr together, for assertions on messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn require_fmnist() {
    assert!(
        Path::new(FMNIST).is_dir(),
        "Fashion-MNIST is missing: `apt-get install -y dataset-fashion-mnist` (.ci/run does this)"
    );
}
