//! A study file (TOML) read by serde into the library's `StudySpec`: the runs to train, the analyses to run
//! on them, the figures to draw. Run settings are `covf train`'s (`TrainSettings`: its flags as keys,
//! `steps = 10` is `--steps 10`), so a study has the same defaults and the same checks as the command line.
//! The format is described in docs/study.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{PerturbationSpec, StudyRun, StudySpec, TradeoffSpec};
use crate::analysis::co::CoCriteria;
use crate::analysis::Images;
use crate::error::CovfError;
use crate::run::{Eps, TrainSettings, TrainSpec};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    study: Header,
    #[serde(default)]
    train: toml::Table,
    runs: BTreeMap<String, toml::Table>,
    #[serde(default)]
    analyses: Analyses,
    tradeoff: Option<Tradeoff>,
    #[serde(default)]
    figures: Figures,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Header {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default = "default_n")]
    n: usize,
    /// `test` (default) or `train`: the images every analysis of the study uses.
    #[serde(default)]
    images: Option<String>,
    #[serde(default)]
    seed: u64,
    #[serde(default = "default_batch")]
    batch_size: usize,
}

fn default_n() -> usize {
    1000
}
fn default_batch() -> usize {
    250
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Analyses {
    reference: Option<String>,
    #[serde(default)]
    transfer: Vec<String>,
    #[serde(default)]
    gap_pgd10: Vec<String>,
    #[serde(default)]
    gap_pgd20: Vec<String>,
    #[serde(default)]
    curves: Vec<String>,
    #[serde(default)]
    steps: Vec<String>,
    #[serde(default)]
    co: Vec<String>,
    perturbations: Option<Perturbations>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Perturbations {
    run: String,
    #[serde(default)]
    epochs: Vec<usize>,
    #[serde(default = "default_examples")]
    examples: usize,
}

fn default_examples() -> usize {
    4
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Tradeoff {
    methods: Vec<String>,
    eps_train: Vec<String>,
    eps_eval: Option<String>,
    #[serde(default = "default_pgd")]
    pgd_steps: usize,
    /// Train flags for the sweep's runs on top of `[train]`.
    #[serde(default)]
    train: toml::Table,
}

fn default_pgd() -> usize {
    20
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Figures {
    #[serde(default)]
    draw: Vec<String>,
}

/// Merges `over` onto `base` (keys of `over` win).
fn merged(base: &toml::Table, over: &toml::Table) -> toml::Table {
    let mut t = base.clone();
    for (k, v) in over {
        t.insert(k.clone(), v.clone());
    }
    t
}

fn train_spec(table: &toml::Table, at: &str) -> Result<TrainSpec, CovfError> {
    TrainSettings::from_toml(table, at)?.resolve()
}

/// Parses and validates a study file's text. `dir` is where the study's outputs go.
pub fn parse(text: &str, path: &Path, dir: Option<PathBuf>) -> crate::Result<StudySpec> {
    let f: File = toml::from_str(text).map_err(|e| CovfError::data(path, format!("not a valid study file: {e}")))?;
    crate::run::spec::validate_run_name(&f.study.name).map_err(|_| {
        CovfError::spec(
            "study.name",
            format!("'{}': letters, digits, '.', '_' and '-' only", f.study.name),
        )
    })?;
    if f.runs.is_empty() {
        return Err(CovfError::data(path, "names no runs ([runs.<id>] tables)"));
    }
    let mut runs = Vec::new();
    for (id, table) in &f.runs {
        let spec = train_spec(&merged(&f.train, table), &format!("runs.{id}"))?;
        runs.push(StudyRun { id: id.clone(), spec });
    }
    let tradeoff = match &f.tradeoff {
        None => None,
        Some(t) => {
            let base = merged(&f.train, &t.train);
            let mut specs = Vec::new();
            for m in &t.methods {
                for e in &t.eps_train {
                    let mut table = base.clone();
                    table.insert("method".into(), toml::Value::String(m.clone()));
                    table.insert("eps".into(), toml::Value::String(e.clone()));
                    if m == "pgd" && !table.contains_key("steps") {
                        table.insert("steps".into(), toml::Value::Integer(10));
                    }
                    specs.push(train_spec(&table, "tradeoff")?);
                }
            }
            let eps_eval = match &t.eps_eval {
                Some(s) => Eps::parse(s)?.value,
                // The dataset's default ε, as `covf train` resolves it for the sweep's settings.
                None => {
                    let mut table = base.clone();
                    table.remove("eps");
                    train_spec(&table, "tradeoff")?.eps.value
                }
            };
            Some(TradeoffSpec {
                specs,
                eps_eval,
                pgd_steps: t.pgd_steps,
            })
        }
    };
    let dir = dir.unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).join(&f.study.name));
    let a = f.analyses;
    let spec = StudySpec {
        name: f.study.name.clone(),
        dir,
        n: f.study.n,
        images: match &f.study.images {
            Some(s) => Images::parse(s)?,
            None => Images::Test,
        },
        seed: f.study.seed,
        batch_size: f.study.batch_size,
        runs,
        reference: a.reference,
        transfer: a.transfer,
        gap_pgd10: a.gap_pgd10,
        gap_pgd20: a.gap_pgd20,
        curves: a.curves,
        steps: a.steps,
        co: a.co,
        co_criteria: CoCriteria::default(),
        perturbations: a.perturbations.map(|p| PerturbationSpec {
            run: p.run,
            epochs: p.epochs,
            examples: p.examples,
        }),
        tradeoff,
        figures: f.figures.draw,
        source: text.to_string(),
    };
    let _ = f.study.description;
    spec.validate()?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
[study]
name = "t"
n = 100

[train]
save-every-epoch = true
train-subset = 512
epochs = 2

[runs.fgsm]
method = "fgsm"

[runs.pgd]
method = "pgd"
steps = 3

[analyses]
reference = "pgd"
transfer = ["fgsm"]
co = ["fgsm"]
perturbations = { run = "fgsm", epochs = [1, 2], examples = 2 }

[tradeoff]
methods = ["fgsm"]
eps-train = ["0.1", "0.2"]

[figures]
draw = ["1a", "2a"]
"#;

    #[test]
    fn a_study_name_cannot_leave_the_analyses_directory() {
        for bad in ["../../etc", "a/b", ".hidden", "..", "/abs"] {
            let text = SMALL.replace("name = \"t\"", &format!("name = {bad:?}"));
            let e = parse(&text, Path::new("analyses/t.toml"), None)
                .unwrap_err()
                .to_string();
            assert!(e.contains("study.name"), "{bad}: {e}");
        }
    }

    /// Study files are fuzzed as text: the two valid files above, mutated by inserting, deleting and
    /// replacing TOML tokens and study keys, must give a study or an error, never a panic.
    /// `COVF_FUZZ_CASES` sets the number of inputs (default 2,000; docs/reliability.md).
    #[test]
    fn the_study_parser_never_panics() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestCaseError, TestRunner};
        const TOKENS: &[&str] = &[
            "[",
            "]",
            "[[",
            "]]",
            "=",
            "\"",
            "'",
            ",",
            "\n",
            "{",
            "}",
            ".",
            "#",
            "-",
            "0",
            "1",
            "-1",
            "1e999",
            "nan",
            "inf",
            "18446744073709551616",
            "true",
            "\"\"",
            "[study]",
            "[train]",
            "[runs.x]",
            "[analyses]",
            "[tradeoff]",
            "[figures]",
            "name",
            "method",
            "eps",
            "epochs",
            "steps",
            "reference",
            "transfer",
            "co",
            "perturbations",
            "run",
            "examples",
            "eps-train",
            "eps-eval",
            "methods",
            "draw",
            "\"fgsm\"",
            "\"pgd\"",
            "\"../x\"",
            "\"8/0\"",
            "\"2a\"",
            "train-subset",
            "n = 0",
            "seed",
            "batch-size",
            "device",
            "\"cuda:9\"",
            "\u{0}",
            "\u{feff}",
        ];
        let cases = std::env::var("COVF_FUZZ_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2_000u32);
        let seeds = [
            SMALL.to_string(),
            include_str!("../../analyses/paper-fmnist.toml").to_string(),
        ];
        let edit = (any::<usize>(), 0..TOKENS.len(), 0u8..3, 1usize..40);
        let strategy = (0..seeds.len(), prop::collection::vec(edit, 1..6));
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let accepted = std::sync::atomic::AtomicUsize::new(0);
        let deep = std::sync::atomic::AtomicUsize::new(0);
        let result = runner.run(&strategy, |(seed, edits)| {
            let mut t: Vec<char> = seeds[seed].chars().collect();
            for (pos, tok, op, len) in edits {
                let at = pos % (t.len() + 1);
                match op {
                    0 => {
                        t.splice(at..at, TOKENS[tok].chars());
                    }
                    1 => {
                        t.drain(at..(at + len).min(t.len()));
                    }
                    _ => {
                        t.splice(at..(at + len).min(t.len()), TOKENS[tok].chars());
                    }
                }
            }
            let text: String = t.into_iter().collect();
            let ok = crate::testing::catch_quietly(|| parse(&text, Path::new("analyses/fuzz.toml"), None).is_ok())
                .map_err(|_| TestCaseError::fail(format!("panic on:\n{text}")))?;
            if ok {
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            // Valid TOML gets past the syntax into the study's own checks (keys, values, runs): about 21%
            // of the edited files (415 of 2,000 when this was written); fewer than 15% would mean the edits
            // stopped reaching them.
            if text.parse::<toml::Table>().is_ok() {
                deep.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("study parser: {e}");
        }
        let deep = deep.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!(
            "fuzz study: {cases} inputs, {deep} valid TOML reaching the study checks, {} accepted; no panic",
            accepted.load(std::sync::atomic::Ordering::Relaxed)
        );
        assert!(
            f64::from(deep as u32) >= 0.15 * f64::from(cases),
            "only {deep} of {cases} edited study files were valid TOML: the edits never reach the study checks"
        );
    }

    #[test]
    fn a_study_file_becomes_train_specs_like_the_command_line_builds() {
        let s = parse(SMALL, Path::new("analyses/t.toml"), None).unwrap();
        assert_eq!(s.dir, Path::new("analyses/t"));
        assert_eq!(s.n, 100);
        let ids: Vec<&str> = s.runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["fgsm", "pgd"]);
        let pgd = &s.runs[1].spec;
        assert_eq!(pgd.name, "pgd3-fmnist-preact-tiny-eps0.15-s0");
        assert_eq!(
            (pgd.epochs, pgd.train_subset, pgd.save_every_epoch),
            (2, Some(512), true)
        );
        let t = s.tradeoff.as_ref().unwrap();
        let eps: Vec<f32> = t.specs.iter().map(|x| x.eps.value).collect();
        assert_eq!(eps, [0.1, 0.2]);
        // Evaluation ε defaults to the dataset's, as `covf train` would pick it.
        assert_eq!(t.eps_eval, 0.15);
        assert_eq!(s.perturbations.as_ref().unwrap().epochs, [1, 2]);
    }

    #[test]
    fn the_shipped_default_study_is_valid_and_reuses_the_default_runs() {
        let text = include_str!("../../analyses/paper-fmnist.toml");
        let s = parse(text, Path::new("analyses/paper-fmnist.toml"), None).unwrap();
        assert_eq!(s.dir, Path::new("analyses/paper-fmnist"));
        let names: Vec<&str> = s.runs.iter().map(|r| r.spec.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "apart-fmnist-preact-tiny-eps0.15-s0",
                "apart-simple-fmnist-preact-tiny-eps0.15-s0",
                "fgsm-fmnist-preact-tiny-eps0.15-s0",
                "pgd10-fmnist-preact-tiny-eps0.15-s0",
            ]
        );
        // The sweep's ε = 0.15 runs are exactly the study's own runs (so they are reused, not retrained).
        let t = s.tradeoff.as_ref().unwrap();
        assert_eq!(t.specs.len(), 4);
        for r in &s.runs {
            if let Some(same) = t.specs.iter().find(|x| x.name == r.spec.name) {
                assert_eq!(same, &r.spec);
            }
        }
        assert_eq!(
            t.specs
                .iter()
                .filter(|x| s.runs.iter().any(|r| r.spec.name == x.name))
                .count(),
            2
        );
        assert_eq!(s.figures.len(), 8);
    }

    #[test]
    fn bad_studies_are_refused_with_the_place_at_fault() {
        let unknown_run = SMALL.replace("transfer = [\"fgsm\"]", "transfer = [\"nope\"]");
        let e = parse(&unknown_run, Path::new("t.toml"), None).unwrap_err().to_string();
        assert!(e.contains("'nope' is not a run"), "{e}");
        let bad_flag = SMALL.replace("steps = 3", "stepz = 3");
        let e = parse(&bad_flag, Path::new("t.toml"), None).unwrap_err().to_string();
        assert!(e.contains("runs.pgd") && e.contains("stepz"), "{e}");
        let e = parse("[study]\nname = \"x\"\n", Path::new("t.toml"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.toml"), "{e}");
        let unknown_key = SMALL.replace("n = 100", "n = 100\nfoo = 1");
        assert!(parse(&unknown_key, Path::new("t.toml"), None).is_err());
    }
}
