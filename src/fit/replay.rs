//! Replaying one epoch of a finished run, bit for bit, with the monitor at any resolution (`covf analyze
//! pinpoint`): the run's seeded start, every earlier epoch checked against its checkpoint, then the epoch.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::{open_monitor, Fresh, Trainer};
use crate::error::{CovfError, Result};
use crate::monitor::{self, MonitorRow};
use crate::run::checkpoint::{Checkpoint, RunDir};
use crate::run::sets::load_data;
use crate::run::TrainSpec;

/// What to replay of a finished run: one epoch, the monitor every `every` steps, the weights every
/// `save_every` steps (0: none).
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    /// 1-based.
    pub epoch: usize,
    pub every: usize,
    pub save_every: usize,
    /// The signals, probe and reference to measure (`every` is replaced by the plan's).
    pub monitor: monitor::MonitorSpec,
}

/// One replayed epoch.
pub struct Replay {
    /// The monitor's points in the epoch, from its first step (the model it started from) to its last.
    pub rows: Vec<MonitorRow>,
    /// The weights every `save_every` steps of the epoch.
    pub snapshots: Vec<(u64, BTreeMap<String, Tensor>)>,
    pub steps_per_epoch: usize,
    /// The fingerprint of the replayed end-of-epoch weights, equal to the checkpoint's.
    pub digest: String,
    pub seconds: f64,
}

/// Replays epoch `plan.epoch` of the run `spec` names under `root`: from the seeded initial model through
/// every earlier epoch (each checked against its checkpoint where one is kept), then the epoch itself with
/// exactly the batches and random draws of the original run, measuring the monitor every `plan.every`
/// steps. Refused unless the replayed end-of-epoch weights equal `epoch-i.safetensors` bit for bit. Nothing
/// in the run directory is written.
pub fn replay(spec: &TrainSpec, root: &Path, dev: &Device, plan: &ReplayPlan) -> Result<Replay> {
    let t0 = Instant::now();
    let run = RunDir::new(root, &spec.name)?;
    if plan.epoch == 0 || plan.epoch > run.completed_epochs()? || !run.epoch_path(plan.epoch).is_file() {
        return Err(CovfError::run(
            &spec.name,
            format!(
                "has no committed checkpoint of epoch {} to replay (kept: {:?}); train with --save-every-epoch to \
                 keep every epoch",
                plan.epoch,
                run.epochs()?
            ),
        ));
    }
    if plan.every == 0 {
        return Err(CovfError::spec("--every", "must be at least 1 step"));
    }
    // The replay measures its own points; an early stop of the original run has nothing to say here.
    let spec = TrainSpec {
        early_stop: None,
        monitor: monitor::MonitorSpec {
            every: monitor::Every::Steps(plan.every),
            ..plan.monitor.clone()
        },
        ..spec.clone()
    };
    spec.validate()?;
    let (train, test) = load_data(&spec)?;
    let Fresh {
        model,
        store,
        opt,
        method,
    } = Fresh::new(&spec, &train, dev)?;
    let nb = train.len().div_ceil(spec.batch_size.max(1));
    let mut monitor = open_monitor(&spec, root, &train, dev)?.map(|m| m.starting_at(((plan.epoch - 1) * nb) as u64));
    if monitor.is_none() {
        return Err(CovfError::spec("monitor", "the replay measures no signal: name some"));
    }
    let mut t = Trainer {
        spec: &spec,
        dev,
        quiet: true,
        run,
        train,
        test,
        model,
        store,
        opt,
        method,
        kept_positions: Vec::new(),
        records: Vec::new(),
        step_rows: Vec::new(),
        monitor: None,
        kept: None,
        stopped: None,
        snap_every: 0,
        snapshots: Vec::new(),
        start: 0,
    };
    let mut digest = String::new();
    for epoch in 0..plan.epoch {
        if epoch + 1 == plan.epoch {
            t.monitor = monitor.take();
            t.snap_every = plan.save_every;
        }
        t.train_epoch(epoch)?;
        let path = t.run.epoch_path(epoch + 1);
        if !path.is_file() {
            continue;
        }
        let want = weights_digest(&Checkpoint::load(&path, dev)?.tensors.into_iter().collect())?;
        digest = weights_digest(&t.store.snapshot())?;
        if digest != want {
            return Err(CovfError::run(
                &spec.name,
                format!(
                    "replaying epoch {} did not reproduce {} (weights {digest}, file {want}): runs repeat bit for \
                     bit only with the covf build and the kind of machine that trained them, and an unchanged file",
                    epoch + 1,
                    path.display()
                ),
            ));
        }
    }
    Ok(Replay {
        rows: t.monitor.map(|m| m.rows).unwrap_or_default(),
        snapshots: t.snapshots,
        steps_per_epoch: nb,
        digest,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// A fingerprint of every tensor's name, dtype, shape and values: equal fingerprints, equal weights.
pub fn weights_digest(tensors: &BTreeMap<String, Tensor>) -> Result<String> {
    let mut h = crate::run::cache::Fnv::default();
    for (name, t) in tensors {
        h.update(name.as_bytes());
        h.update(format!("{:?}{:?}", t.dtype(), t.dims()).as_bytes());
        let flat = t.flatten_all()?;
        match t.dtype() {
            DType::I64 => flat.to_vec1::<i64>()?.iter().for_each(|v| h.update(&v.to_le_bytes())),
            DType::U32 => flat.to_vec1::<u32>()?.iter().for_each(|v| h.update(&v.to_le_bytes())),
            _ => flat
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?
                .iter()
                .for_each(|v| h.update(&v.to_le_bytes())),
        }
    }
    Ok(h.hex())
}
