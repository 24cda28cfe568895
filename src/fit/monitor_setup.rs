//! The in-training monitor of a run as its spec asks for it: the fixed probes and the transfer signal's
//! reference model, loaded from the run's checkpoints root.

use std::path::Path;

use candle_core::Device;

use crate::data::{self, Dataset};
use crate::error::{CovfError, Result};
use crate::models::PreActResNet;
use crate::monitor::{self, Monitor, Probes};
use crate::run::checkpoint::RunDir;
use crate::run::sets::{load_model, train_image_positions, DATA_SEED};
use crate::run::TrainSpec;

/// The run's monitor (none when it is off): its probes — the first `probe` images of the seeded test
/// order, which the evaluation subset also starts with, and the first of the analyses' training images —
/// and the transfer signal's reference model.
pub(super) fn open_monitor(spec: &TrainSpec, root: &Path, train: &Dataset, dev: &Device) -> Result<Option<Monitor>> {
    let m = &spec.monitor;
    let per_epoch = train.len().div_ceil(spec.batch_size.max(1));
    let every = m.every.steps(per_epoch);
    if !m.is_on() || every == 0 {
        return Ok(None);
    }
    let (_, full_test) = data::load(spec.dataset, spec.data_dir.as_deref())?;
    // A test (or training) set smaller than the probe is probed whole.
    let probe = full_test.subset(m.probe.min(full_test.len()), DATA_SEED, "test")?;
    let test = probe.batch(&(0..probe.len()).collect::<Vec<_>>(), None, dev)?;
    let train_probe = train.batch(&train_image_positions(train, m.probe), None, dev)?;
    let cfg = monitor::ProbeCfg {
        eps: spec.eps.value,
        pgd_steps: spec.eval.pgd_steps,
        pgd_alpha: spec.eval.pgd_alpha,
        wong_steps: spec.eval.probe_steps,
        seed: spec.seed,
    };
    let needs_ref = m.registered()?.iter().any(|s| s.needs_reference());
    let reference = match (&m.reference, needs_ref) {
        (Some(r), true) => {
            let (model, label) = load_reference(spec, root, r, dev)?;
            Some(monitor::Reference::new(Box::new(model), label, &test, &cfg)?)
        }
        _ => None,
    };
    let probes = Probes {
        test,
        train: train_probe,
        reference,
        cfg,
    };
    Ok(Some(Monitor::new(m, every, probes)?))
}

/// `RUN` (its last epoch) or `RUN@EPOCH` under `root`, loaded, with its label `RUN@EPOCH`.
fn load_reference(spec: &TrainSpec, root: &Path, text: &str, dev: &Device) -> Result<(PreActResNet, String)> {
    let (name, epoch) = match text.rsplit_once('@') {
        Some((n, e)) => {
            let e: usize = e.parse().map_err(|_| {
                CovfError::spec("--monitor-ref", format!("'{text}': the epoch after @ must be a number"))
            })?;
            (n, Some(e))
        }
        None => (text, None),
    };
    if name == spec.name {
        return Err(CovfError::spec(
            "--monitor-ref",
            format!("'{text}' is the run being trained: name a separately trained model (the PGD-10 run)"),
        ));
    }
    let run = RunDir::new(root, name)?;
    if !run.exists() {
        return Err(CovfError::run(
            name,
            format!("the monitor's reference is not in {}: train it first", root.display()),
        ));
    }
    let done = run.completed_epochs()?;
    let epoch = epoch.unwrap_or(done);
    let path = run.epoch_path(epoch);
    if epoch == 0 || !path.is_file() {
        return Err(CovfError::run(
            name,
            format!(
                "has no checkpoint of epoch {epoch} ({} complete epochs; without --save-every-epoch only the last is kept)",
                done
            ),
        ));
    }
    let stored = run.read_spec()?;
    if stored.dataset != spec.dataset {
        return Err(CovfError::spec(
            "--monitor-ref",
            format!(
                "{name} was trained on {}, this run on {}: perturbations only transfer within a dataset",
                stored.dataset.name(),
                spec.dataset.name()
            ),
        ));
    }
    let (model, _) = load_model(&stored, &path, dev)?;
    Ok((model.detached(), format!("{name}@{epoch}")))
}
