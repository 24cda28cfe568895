//! Shared by the notebooks: which study to read (first argument, default analyses/paper-fmnist) and a
//! friendly exit when its tables are not there yet.

use std::path::PathBuf;

/// `analyses/<study>` from the command line, and its `out/` directory.
pub fn study_dirs() -> (PathBuf, PathBuf) {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("analyses/paper-fmnist"));
    let out = dir.join("out");
    (dir, out)
}

/// Prints why the notebook cannot run and how to make its data, then exits with 2.
pub fn missing(out: &std::path::Path, e: impl std::fmt::Display) -> ! {
    eprintln!("{e}");
    eprintln!(
        "this notebook reads the tables of a study in {}: run `covf study analyses/paper-fmnist.toml` first",
        out.display()
    );
    std::process::exit(2)
}
