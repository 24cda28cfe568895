//! A study file (TOML) read by serde into the library's `StudySpec`: the runs to train, the analyses to run
//! on them, the figures to draw. Run settings are `covf train`'s (`TrainSettings`: its flags as keys,
//! `steps = 10` is `--steps 10`), so a study has the same defaults and the same checks as the command line.
//! The format is described in docs/study.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{StudyJob, StudyRun, StudySpec};
use crate::analysis::registry::{by_study_key, Flags};
use crate::analysis::Images;
use crate::error::CovfError;
use crate::run::settings::flag_text;
use crate::run::TrainSettings;

#[derive(Debug, Deserialize)]
struct File {
    study: Header,
    #[serde(default)]
    train: toml::Table,
    runs: BTreeMap<String, toml::Table>,
    #[serde(default)]
    analyses: toml::Table,
    #[serde(default)]
    figures: Figures,
    /// Top-level tables named after an analysis (`[tradeoff]`); any other key is refused.
    #[serde(flatten)]
    rest: BTreeMap<String, toml::Value>,
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
#[serde(deny_unknown_fields)]
struct Figures {
    #[serde(default)]
    draw: Vec<String>,
}

/// Merges `over` onto `base` (keys of `over` win).
/// The monitor's reference model key of `[train]` and `[runs.<id>]`.
const MONITOR_REF: &str = "monitor-ref";

fn merged(base: &toml::Table, over: &toml::Table) -> toml::Table {
    let mut t = base.clone();
    for (k, v) in over {
        t.insert(k.clone(), v.clone());
    }
    t
}

fn strings(v: &toml::Value, at: &str) -> Result<Vec<String>, CovfError> {
    let items = match v {
        toml::Value::String(s) => return Ok(vec![s.clone()]),
        toml::Value::Array(a) => a,
        _ => return Err(CovfError::spec(at, "expected a run id or a list of run ids")),
    };
    items
        .iter()
        .map(|x| {
            x.as_str()
                .map(str::to_string)
                .ok_or_else(|| CovfError::spec(at, format!("{x}: expected a run id (a string)")))
        })
        .collect()
}

/// One analysis key: a list of run ids, or a table of `runs` (or `run`), `epochs`, the analysis's own flags
/// and, for an analysis that trains, `train` settings on top of the study's `[train]`.
fn job(key: &str, v: &toml::Value, train: &toml::Table) -> Result<StudyJob, CovfError> {
    let at = format!("analyses.{key}");
    let (analysis, mut flags) = by_study_key(key).ok_or_else(|| {
        CovfError::spec(
            &at,
            format!(
                "no such analysis; the analyses are {}",
                crate::analysis::ANALYSES
                    .iter()
                    .map(|a| a.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    let mut j = StudyJob {
        analysis: analysis.name().to_string(),
        runs: Vec::new(),
        epochs: Vec::new(),
        flags: Flags::default(),
        train: TrainSettings::default(),
    };
    let mut own_train = toml::Table::new();
    match v {
        toml::Value::Table(t) => {
            for (k, x) in t {
                let here = format!("{at}.{k}");
                match k.as_str() {
                    "runs" | "run" => j.runs = strings(x, &here)?,
                    "epochs" => {
                        j.epochs = x
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|e| e.as_integer().and_then(|e| usize::try_from(e).ok()))
                                    .collect()
                            })
                            .unwrap_or(None)
                            .ok_or_else(|| CovfError::spec(&here, "expected a list of epoch numbers"))?;
                    }
                    "train" if analysis.trains() => {
                        own_train = x
                            .as_table()
                            .cloned()
                            .ok_or_else(|| CovfError::spec(&here, "expected a table of train settings"))?;
                    }
                    _ if analysis.flags().iter().any(|f| f.name == k) => {
                        if let Some(t) = flag_text(x, &here)? {
                            flags.set(k, t);
                        }
                    }
                    _ => {
                        let mut known: Vec<&str> = vec!["runs", "epochs"];
                        if analysis.trains() {
                            known.push("train");
                        }
                        known.extend(analysis.flags().iter().map(|f| f.name));
                        return Err(CovfError::spec(
                            &here,
                            format!("unknown key; {} takes {}", analysis.name(), known.join(", ")),
                        ));
                    }
                }
            }
        }
        other => j.runs = strings(other, &at)?,
    }
    if analysis.trains() {
        j.train = TrainSettings::from_toml(&merged(train, &own_train), &at)?;
    }
    j.flags = flags;
    Ok(j)
}

/// Parses and validates a study file's text. `dir` is where the study's outputs go.
pub fn parse(text: &str, path: &Path, dir: Option<PathBuf>) -> crate::Result<StudySpec> {
    let mut f: File =
        toml::from_str(text).map_err(|e| CovfError::data(path, format!("not a valid study file: {e}")))?;
    crate::run::spec::validate_run_name(&f.study.name).map_err(|_| {
        CovfError::spec(
            "study.name",
            format!("'{}': letters, digits, '.', '_' and '-' only", f.study.name),
        )
    })?;
    if f.runs.is_empty() {
        return Err(CovfError::data(path, "names no runs ([runs.<id>] tables)"));
    }
    // `monitor-ref` may name a run of the study by its id: it stands for that run's name, the run trains
    // before the runs that read it, and it does not monitor its own transfer.
    let mut names = BTreeMap::new();
    for (id, table) in &f.runs {
        let mut t = merged(&f.train, table);
        t.remove(MONITOR_REF);
        let spec = TrainSettings::from_toml(&t, &format!("runs.{id}"))?.resolve()?;
        names.insert(id.clone(), spec.name);
    }
    let by_name = |t: &toml::Table| -> toml::Table {
        let mut t = t.clone();
        if let Some(name) = t.get(MONITOR_REF).and_then(|v| v.as_str()).and_then(|id| names.get(id)) {
            t.insert(MONITOR_REF.into(), toml::Value::String(name.clone()));
        }
        t
    };
    f.train = by_name(&f.train);
    let mut runs = Vec::new();
    for (id, table) in &f.runs {
        let mut spec =
            TrainSettings::from_toml(&merged(&f.train, &by_name(table)), &format!("runs.{id}"))?.resolve()?;
        if spec.monitor.reference.as_deref() == Some(spec.name.as_str()) {
            spec.monitor.reference = None;
            spec.monitor.signals.retain(|s| s != "transfer");
        }
        runs.push(StudyRun { id: id.clone(), spec });
    }
    // A reference trains first (otherwise the file's order of ids).
    let refs: Vec<String> = runs.iter().filter_map(|r| r.spec.monitor.reference.clone()).collect();
    runs.sort_by_key(|r| !refs.contains(&r.spec.name));
    let mut reference = None;
    let mut jobs = Vec::new();
    for (key, v) in &f.analyses {
        if key == "reference" {
            reference = Some(
                v.as_str()
                    .ok_or_else(|| CovfError::spec("analyses.reference", "expected a run id"))?
                    .to_string(),
            );
        } else {
            jobs.push(job(key, v, &f.train)?);
        }
    }
    for (key, v) in &f.rest {
        if by_study_key(key).is_none() {
            return Err(CovfError::data(
                path,
                format!("unknown key '{key}' (a study has [study], [train], [runs.<id>], [analyses], [figures])"),
            ));
        }
        jobs.push(job(key, v, &f.train)?);
    }
    let dir = dir.unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).join(&f.study.name));
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
        reference,
        jobs,
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

    fn sweep_of(s: &StudySpec) -> (Vec<crate::run::TrainSpec>, f32) {
        let t = s.jobs.iter().find(|j| j.analysis == "tradeoff").unwrap();
        crate::analysis::tradeoff::sweep(&t.flags, &t.train).unwrap()
    }

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
        let (specs, eps_eval) = sweep_of(&s);
        let eps: Vec<f32> = specs.iter().map(|x| x.eps.value).collect();
        assert_eq!(eps, [0.1, 0.2]);
        // Evaluation ε defaults to the dataset's, as `covf train` would pick it.
        assert_eq!(eps_eval, 0.15);
        let p = s.jobs.iter().find(|j| j.analysis == "perturbations").unwrap();
        assert_eq!(
            (p.runs.as_slice(), p.epochs.as_slice()),
            (&["fgsm".to_string()][..], &[1, 2][..])
        );
        assert_eq!(p.flags.get("examples"), Some("2"));
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
                "pgd10-fmnist-preact-tiny-eps0.15-s0",
                "apart-fmnist-preact-tiny-eps0.15-s0",
                "apart-simple-fmnist-preact-tiny-eps0.15-s0",
                "fgsm-fmnist-preact-tiny-eps0.15-s0",
            ]
        );
        // The sweep's ε = 0.15 runs are exactly the study's own runs (so they are reused, not retrained).
        let (specs, _) = sweep_of(&s);
        assert_eq!(specs.len(), 4);
        for r in &s.runs {
            if let Some(same) = specs.iter().find(|x| x.name == r.spec.name) {
                assert_eq!(same, &r.spec);
            }
        }
        assert_eq!(
            specs
                .iter()
                .filter(|x| s.runs.iter().any(|r| r.spec.name == x.name))
                .count(),
            2
        );
        assert_eq!(s.figures.len(), 11);
        // `monitor-ref = "pgd10"` names the study's PGD-10 run by its id: it trains first, the others read it,
        // and it does not monitor its transfer to itself.
        let by = |id: &str| &s.runs.iter().find(|r| r.id == id).unwrap().spec;
        let pgd = "pgd10-fmnist-preact-tiny-eps0.15-s0";
        assert_eq!(by("fgsm").monitor.reference.as_deref(), Some(pgd));
        assert!(by("fgsm").monitor.signals.iter().any(|x| x == "transfer"));
        assert_eq!(by("pgd10").monitor.reference, None);
        assert!(!by("pgd10").monitor.signals.iter().any(|x| x == "transfer"));
        assert!(specs.iter().all(|x| x.monitor.reference.as_deref() == Some(pgd)));
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
        // An analysis's own keys are its flags; others are refused with their path and what it takes.
        let e = parse(
            &SMALL.replace("examples = 2", "exampels = 2"),
            Path::new("t.toml"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("analyses.perturbations.exampels") && e.contains("examples"),
            "{e}"
        );
        let e = parse(&SMALL.replace("[tradeoff]", "[tradeof]"), Path::new("t.toml"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tradeof"), "{e}");
        let e = parse(
            &SMALL.replace("co = [\"fgsm\"]", "co = { runs = [\"fgsm\"], drop = -1 }"),
            Path::new("t.toml"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--drop"), "{e}");
    }

    #[test]
    fn the_plan_runs_the_verdicts_inputs_first_on_the_union_of_runs() {
        let s = parse(SMALL, Path::new("analyses/t.toml"), None).unwrap();
        let plan = s.plan().unwrap();
        let seen: Vec<(&str, Vec<&str>)> = plan
            .iter()
            .map(|j| (j.analysis.as_str(), j.runs.iter().map(String::as_str).collect()))
            .collect();
        // `transfer` already names fgsm; co adds its gap-pgd10 job; perturbations and the sweep follow.
        assert_eq!(
            seen,
            [
                ("transfer", vec!["fgsm"]),
                ("gap", vec!["fgsm"]),
                ("co", vec!["fgsm"]),
                ("perturbations", vec!["fgsm"]),
                ("tradeoff", vec![]),
            ]
        );
        let wider = SMALL.replace("co = [\"fgsm\"]", "co = [\"fgsm\", \"pgd\"]");
        let plan = parse(&wider, Path::new("analyses/t.toml"), None)
            .unwrap()
            .plan()
            .unwrap();
        assert_eq!(plan[0].runs, ["fgsm", "pgd"]);
        assert_eq!(plan[1].flags.get("ref"), Some("pgd10"));
    }
}
