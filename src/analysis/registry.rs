//! What `covf analyze`, `covf study` and `covf figures` know of an analysis: the `Analysis` trait each
//! analysis file implements (name, help, flags, what it reads, the tables it writes, its study keys), the
//! `Job` it runs on and the `Outcome` it reports. One line in `analysis::ANALYSES` makes an analysis known
//! to all three commands.

use std::path::Path;
use std::str::FromStr;

use super::{AnalysisCtx, EpochRef};
use crate::error::{CovfError, Result};
use crate::run::checkpoint::RunDir;
use crate::run::TrainSettings;
pub use crate::train::method::{Flag, Flags};

/// Everything one analysis runs on, whether `covf analyze` or a study built it.
pub struct Job<'a> {
    pub ctx: &'a AnalysisCtx,
    /// `checkpoints/`: where an analysis that trains its runs keeps them.
    pub root: &'a Path,
    pub runs: Vec<RunDir>,
    /// The chosen epochs of `runs`, then any checkpoint file outside a run directory.
    pub checkpoints: Vec<EpochRef>,
    /// The reference model, for an analysis that reads one (`Analysis::uses_reference`).
    pub reference: Option<EpochRef>,
    /// The analysis's own flags as given (study keys arrive here too).
    pub flags: Flags,
    /// Train settings every run an analysis trains shares (`--train-args`, a study's `[train]`).
    pub train: TrainSettings,
}

impl Job<'_> {
    pub fn reference(&self) -> Result<&EpochRef> {
        self.reference
            .as_ref()
            .ok_or_else(|| CovfError::spec("--ref", "this analysis needs a reference model (--ref RUN[@EPOCH])"))
    }

    /// Flag `f` as given, or its declared default.
    pub fn value<T: FromStr>(&self, f: &Flag) -> Result<T> {
        value(&self.flags, f)
    }

    /// The epochs' checkpoints of each run, in run order (checkpoint files outside runs left out).
    pub fn per_run(&self) -> Vec<(RunDir, Vec<EpochRef>)> {
        self.runs
            .iter()
            .map(|r| {
                let cks = self
                    .checkpoints
                    .iter()
                    .filter(|c| c.run.path == r.path && c.run.name == r.name)
                    .cloned()
                    .collect();
                (r.clone(), cks)
            })
            .collect()
    }
}

/// Flag `f` in `flags`, or its declared default (one definition of each default: the declaration).
pub fn value<T: FromStr>(flags: &Flags, f: &Flag) -> Result<T> {
    let text = flags.get(f.name).unwrap_or(f.default);
    if text.trim().is_empty() {
        return Err(CovfError::spec(format!("--{}", f.name), "is required"));
    }
    text.trim()
        .parse::<T>()
        .map_err(|_| CovfError::spec(format!("--{}", f.name), format!("'{text}' is not a valid value")))
}

/// A comma-separated list flag, items trimmed (empty when neither given nor defaulted).
pub fn list(flags: &Flags, f: &Flag) -> Vec<String> {
    flags
        .get(f.name)
        .unwrap_or(f.default)
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// What an analysis did: the tables it wrote, what `covf analyze` prints, what `covf study` says as it goes.
#[derive(Debug, Default)]
pub struct Outcome {
    pub tables: Vec<String>,
    /// Its table for the terminal: `covf analyze` prints it on stdout.
    pub lines: Vec<String>,
    /// One line per result worth reading while a study runs (a run's verdict); `covf study` says them.
    pub summary: Vec<String>,
    /// Said by both commands (stderr): something the user should know about the result.
    pub warnings: Vec<String>,
    /// The runs it trained or reused itself (a study records them with the stage).
    pub trained: Vec<String>,
}

/// One analysis, as the three commands that drive analyses know it.
pub trait Analysis: Sync {
    /// `covf analyze <name>`, and its key in a study file's `[analyses]`.
    fn name(&self) -> &'static str;
    /// One line for `covf analyze --help`.
    fn about(&self) -> &'static str;
    /// An example command line, shown under `covf analyze <name> --help`.
    fn example(&self) -> &'static str {
        ""
    }
    /// Flags beyond the ones every analysis shares, also its keys in a study file.
    fn flags(&self) -> &'static [Flag] {
        &[]
    }
    /// Reads a reference model (`--ref RUN[@EPOCH]`, a study's `reference`).
    fn uses_reference(&self) -> bool {
        false
    }
    /// Reads the checkpoints of the runs it is given (`false`: only the reference, or runs it trains).
    fn reads_runs(&self) -> bool {
        true
    }
    /// Trains its own runs from `Job::train` (`--train-args`, a study's `[train]` and its own `train` table).
    fn trains(&self) -> bool {
        false
    }
    /// The flags a study key stands for, when the key names this analysis (`gap-pgd20` is `gap --ref pgd20`).
    fn study_key(&self, key: &str) -> Option<Flags> {
        (key == self.name()).then(Flags::default)
    }
    /// Analyses whose tables this one also writes, with their flags: they run first, on the same runs.
    fn upstream(&self, _flags: &Flags) -> Result<Vec<(&'static str, Flags)>> {
        Ok(Vec::new())
    }
    /// The tables it writes under these flags (how figures find what they need).
    fn tables(&self, _flags: &Flags) -> Result<Vec<String>> {
        Ok(vec![self.name().to_string()])
    }
    /// Checks flags and settings before anything runs (a study checks every analysis before training).
    fn check(&self, _flags: &Flags, _train: &TrainSettings) -> Result<()> {
        Ok(())
    }
    fn run(&self, job: &Job) -> Result<Outcome>;
}

impl std::fmt::Debug for dyn Analysis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The analysis `covf analyze <name>` runs.
pub fn lookup(name: &str) -> Option<&'static dyn Analysis> {
    super::ANALYSES.iter().copied().find(|a| a.name() == name)
}

/// The analysis and flags a study key stands for.
pub fn by_study_key(key: &str) -> Option<(&'static dyn Analysis, Flags)> {
    super::ANALYSES.iter().find_map(|a| a.study_key(key).map(|f| (*a, f)))
}

/// The `covf analyze` command that writes `table` (`gap-pgd20` → `covf analyze gap --ref pgd20`).
pub fn producer(table: &str) -> Option<String> {
    super::ANALYSES.iter().find_map(|a| {
        let flags = a.study_key(table)?;
        if !a.tables(&flags).ok()?.iter().any(|t| t == table) {
            return None;
        }
        let mut cmd = format!("covf analyze {}", a.name());
        for (k, v) in flags.iter() {
            cmd.push_str(&format!(" --{k} {v}"));
        }
        Some(cmd)
    })
}

/// Position in the registry: analyses run in this order, so one runs after those whose tables it reads.
pub fn order(name: &str) -> usize {
    super::ANALYSES
        .iter()
        .position(|a| a.name() == name)
        .unwrap_or(usize::MAX)
}

/// `12.5` for a fraction 0.125, `–` for a missing value.
pub fn pct(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else {
        format!("{:.1}", 100.0 * x)
    }
}

/// An optional epoch, `–` when absent.
pub fn opt(e: Option<u64>) -> String {
    e.map_or("–".into(), |e| e.to_string())
}

/// `0.15` rather than `0.15000000596046448` (ε is stored from an f32).
pub fn trim(v: f64) -> String {
    let s = format!("{:.4}", v);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Flag = Flag {
        name: "drop",
        help: "",
        value: Some("F"),
        default: "0.2",
    };
    const REQ: Flag = Flag {
        name: "methods",
        help: "",
        value: Some("M,..."),
        default: "",
    };

    #[test]
    fn values_fall_back_to_the_declared_default_and_name_the_flag_at_fault() {
        assert_eq!(value::<f64>(&Flags::default(), &F).unwrap(), 0.2);
        assert_eq!(value::<f64>(&Flags::default().with("drop", " 0.5"), &F).unwrap(), 0.5);
        let e = value::<f64>(&Flags::default().with("drop", "x"), &F)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--drop") && e.contains("'x'"), "{e}");
        let e = value::<String>(&Flags::default(), &REQ).unwrap_err().to_string();
        assert!(e.contains("--methods") && e.contains("required"), "{e}");
        assert_eq!(
            list(&Flags::default().with("methods", "fgsm, apart,"), &REQ),
            ["fgsm", "apart"]
        );
        assert!(list(&Flags::default(), &REQ).is_empty());
    }

    #[test]
    fn every_analysis_has_a_unique_name_and_its_own_study_key() {
        let mut names: Vec<&str> = super::super::ANALYSES.iter().map(|a| a.name()).collect();
        for n in &names {
            assert_eq!(by_study_key(n).map(|(a, _)| a.name()), Some(*n));
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), super::super::ANALYSES.len());
        assert_eq!(producer("gap-pgd20").as_deref(), Some("covf analyze gap --ref pgd20"));
        assert_eq!(producer("transfer").as_deref(), Some("covf analyze transfer"));
        assert_eq!(producer("nosuch"), None);
        assert_eq!(trim(0.15000000596046448), "0.15");
        assert_eq!(pct(0.125), "12.5");
    }
}
