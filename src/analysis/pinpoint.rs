//! `covf analyze pinpoint`: at which *step* a run catastrophically overfitted. It replays epoch i of a
//! finished run (`fit::replay`: from the seeded initial model, every earlier epoch checked against its
//! checkpoint, then epoch i with exactly the original batches and random draws), measures the monitor's
//! signals every `--every` steps of it, and refuses unless the replayed end-of-epoch weights equal
//! `epoch-i.safetensors` bit for bit. It reports the CO step (the probe's PGD accuracy `--drop` below its
//! best so far, and on average over the next half epoch or what is left of it) and each signal's change
//! step, and keeps the weights every `--save-every` steps within `--window` points of the CO step as
//! mini-checkpoints under `out/pinpoint/<run>-e<i>/`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::co::{pgd_series, signal_rows, signed, CoSignalRow};
use super::detectors::DROP;
use super::registry::{opt, value, Analysis, Flag, Flags, Job, Outcome};
use super::tidy;
use crate::error::{CovfError, Result};
use crate::fit::{replay, ReplayPlan};
use crate::monitor::detect::changes;
use crate::monitor::{Every, MonitorRow, MonitorSpec, DEFAULT_PROBE};
use crate::run::checkpoint::{self, RunDir};

const EPOCH: Flag = Flag {
    name: "epoch",
    help: "Epoch to replay (1-based); co: the run's first epoch whose test PGD accuracy fell --drop below the \
           previous epoch's",
    value: Some("E"),
    default: "co",
};
const EVERY: Flag = Flag {
    name: "every",
    help: "Measure the monitor's signals every this many steps of the epoch (1: every step)",
    value: Some("K"),
    default: "5",
};
const SAVE_EVERY: Flag = Flag {
    name: "save-every",
    help: "Keep the weights every this many steps around the CO step (0: none)",
    value: Some("S"),
    default: "5",
};
const WINDOW: Flag = Flag {
    name: "window",
    help: "Mini-checkpoints kept on each side of the CO step, in --save-every steps",
    value: Some("W"),
    default: "5",
};
/// One replayed epoch of one run: a row of `pinpoint-summary`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PinpointRow {
    pub run: String,
    pub method: String,
    pub seed: u64,
    pub epoch: u64,
    /// The epoch's steps: (epoch − 1)·steps_per_epoch + 1 … epoch·steps_per_epoch.
    pub first_step: u64,
    pub last_step: u64,
    pub every: u64,
    pub co_step: Option<u64>,
    pub deterioration_step: Option<u64>,
    /// The replayed end-of-epoch weights' fingerprint, equal to the checkpoint's (the replay checked it).
    pub weights: String,
    pub replay_seconds: f64,
    /// Mini-checkpoints written, and where.
    pub snapshots: u64,
    pub snapshot_dir: String,
}

/// The epoch `--epoch` names for `run`.
fn target_epoch(flags: &Flags, run: &RunDir, drop: f64) -> Result<usize> {
    let text = flags.get(EPOCH.name).unwrap_or(EPOCH.default).trim().to_string();
    if text != "co" {
        return value(flags, &EPOCH);
    }
    let pgd = pgd_series(run)?;
    pgd.windows(2)
        .find(|w| w[0].1 - w[1].1 >= drop)
        .map(|w| w[1].0 as usize)
        .ok_or_else(|| {
            CovfError::run(
                &run.name,
                format!(
                    "no epoch's test PGD accuracy fell {drop} below the previous epoch's (per epoch: {}): name \
                     the epoch to replay with --epoch",
                    pgd.iter()
                        .map(|(e, a)| format!("{e}: {:.1}%", 100.0 * a))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
}

/// `covf analyze pinpoint`; `pinpoint = { runs = [...], epoch = 2 }` in a study.
pub struct Pinpoint;

impl Analysis for Pinpoint {
    fn name(&self) -> &'static str {
        "pinpoint"
    }
    fn about(&self) -> &'static str {
        "Replays the CO epoch of a run bit-exactly and finds the step at which it overfitted, with every \
         signal's change step"
    }
    fn example(&self) -> &'static str {
        "covf analyze pinpoint --runs fgsm-fmnist-preact-tiny-eps0.15-s1 --epoch 2 --every 1"
    }
    fn flags(&self) -> &'static [Flag] {
        &[EPOCH, EVERY, SAVE_EVERY, WINDOW, DROP]
    }
    fn tables(&self, _: &Flags) -> Result<Vec<String>> {
        Ok(vec![
            "pinpoint".into(),
            "pinpoint-signals".into(),
            "pinpoint-summary".into(),
        ])
    }
    fn check(&self, flags: &Flags, _: &crate::run::TrainSettings) -> Result<()> {
        if flags.get(EPOCH.name).is_some_and(|e| e.trim() != "co") {
            let e: usize = value(flags, &EPOCH)?;
            if e == 0 {
                return Err(CovfError::spec("--epoch", "epochs count from 1"));
            }
        }
        if value::<usize>(flags, &EVERY)? == 0 {
            return Err(CovfError::spec("--every", "must be at least 1 step"));
        }
        value::<usize>(flags, &SAVE_EVERY)?;
        value::<usize>(flags, &WINDOW)?;
        let d: f64 = value(flags, &DROP)?;
        if !(d > 0.0 && d <= 1.0) {
            return Err(CovfError::spec("--drop", format!("{d}: must be in (0, 1]")));
        }
        Ok(())
    }
    fn run(&self, job: &Job) -> Result<Outcome> {
        self.check(&job.flags, &job.train)?;
        let (every, save_every, window): (usize, usize, usize) =
            (job.value(&EVERY)?, job.value(&SAVE_EVERY)?, job.value(&WINDOW)?);
        let drop: f64 = job.value(&DROP)?;
        let (mut points, mut signals, mut summary) = (Vec::<MonitorRow>::new(), Vec::<CoSignalRow>::new(), Vec::new());
        let mut lines = Vec::new();
        for run in &job.runs {
            let spec = run.read_spec()?;
            let epoch = target_epoch(&job.flags, run, drop)?;
            // The run's own monitor settings, or every signal that applies when it had none.
            let monitor = if spec.monitor.is_on() {
                spec.monitor.clone()
            } else {
                MonitorSpec::new(Every::Auto, None, DEFAULT_PROBE, None)?
            };
            if !job.ctx.quiet {
                eprintln!(
                    "pinpoint: replaying {} through epoch {epoch}, signals every {every} steps",
                    run.name
                );
            }
            let r = replay(
                &spec,
                job.root,
                &job.ctx.device,
                &ReplayPlan {
                    epoch,
                    every,
                    save_every,
                    monitor,
                },
            )?;
            let ch = changes(&r.rows, drop);
            let dir = job.ctx.out.join("pinpoint").join(format!("{}-e{epoch}", run.name));
            let near = |step: u64| {
                ch.co_step
                    .is_some_and(|co| step.abs_diff(co) <= (window * save_every.max(1)) as u64)
            };
            let mut kept = 0;
            for (step, tensors) in r.snapshots.iter().filter(|(s, _)| near(*s)) {
                let mut meta = BTreeMap::new();
                meta.insert("run".to_string(), run.name.clone());
                meta.insert("step".to_string(), step.to_string());
                meta.insert("epoch".to_string(), epoch.to_string());
                meta.insert("covf_version".to_string(), checkpoint::COVF_VERSION.to_string());
                std::fs::create_dir_all(&dir).map_err(|e| CovfError::io(&dir, e))?;
                checkpoint::save_tensors(&dir.join(format!("step-{step:06}.safetensors")), tensors, &meta)?;
                kept += 1;
            }
            let label = spec.method.label();
            let row = PinpointRow {
                run: run.name.clone(),
                method: label.clone(),
                seed: spec.seed,
                epoch: epoch as u64,
                first_step: ((epoch - 1) * r.steps_per_epoch + 1) as u64,
                last_step: (epoch * r.steps_per_epoch) as u64,
                every: every as u64,
                co_step: ch.co_step,
                deterioration_step: ch.deterioration_step(),
                weights: r.digest.clone(),
                replay_seconds: r.seconds,
                snapshots: kept,
                snapshot_dir: if kept > 0 {
                    dir.display().to_string()
                } else {
                    String::new()
                },
            };
            lines.push(format!(
                "{}: epoch {epoch} (steps {}–{}) replayed in {:.1} s, weights equal the checkpoint ({}); CO step {}, \
                 deterioration step {}; {kept} mini-checkpoints",
                row.run,
                row.first_step,
                row.last_step,
                row.replay_seconds,
                row.weights,
                opt(row.co_step),
                opt(row.deterioration_step)
            ));
            let sig = signal_rows(&run.name, &label, spec.seed, &ch);
            lines.extend(sig.iter().map(|s| {
                format!(
                    "  {:<11} change at step {:>6}  lag {}",
                    s.signal,
                    opt(s.change_step),
                    signed(s.lag_steps)
                )
            }));
            signals.extend(sig);
            points.extend(r.rows);
            summary.push(row);
        }
        tidy::write(&job.ctx.out, "pinpoint", &points)?;
        tidy::write(&job.ctx.out, "pinpoint-signals", &signals)?;
        tidy::write(&job.ctx.out, "pinpoint-summary", &summary)?;
        Ok(Outcome {
            tables: vec!["pinpoint".into(), "pinpoint-signals".into(), "pinpoint-summary".into()],
            lines,
            ..Outcome::default()
        })
    }
}
