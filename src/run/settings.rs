//! A run's settings as the user gave them (`covf train` flags or a study file's keys), before defaults,
//! and `resolve`, the one place where each setting's default is defined: dataset-dependent ε, epochs,
//! architecture and rate here, each method's own defaults in its file (`train::Method::config`).

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::spec::{AttackBn, EpochEvalSpec, Eps, TrainSpec};
use crate::data::{Augment, DatasetKind};
use crate::error::{CovfError, Result};
use crate::models::Arch;
use crate::monitor::detect::Rule;
use crate::monitor::{Every, MonitorSpec, DEFAULT_PROBE};
use crate::optim::{LrSchedule, Precision};
use crate::train::method::{all_flags, lookup, Defaults, Flags};

/// Defaults of the CPU setting (Fashion-MNIST) chosen so that FGSM overfits catastrophically within the
/// run and PGD-10 does not; how they were found: docs/default-setting.md.
pub mod fmnist_defaults {
    pub const EPOCHS: usize = 4;
    pub const LR_MAX: f64 = 0.3;
}
/// MNIST's epochs; CIFAR's as fast_adversarial (cyclic, peak 0.2); ε per dataset: `DatasetKind::default_eps`.
pub const MNIST_EPOCHS: usize = 10;
pub const CIFAR_EPOCHS: usize = 30;
pub const LR_MAX: f64 = 0.2;

/// Every setting of `covf train`, `None` where not given. A study file's keys are these names in
/// kebab-case (`lr-max = 0.1`) plus the chosen method's own flags (`steps = 10`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TrainSettings {
    pub method: Option<String>,
    /// ε as text (`8/255`, `0.3`); a study file may also give a number.
    #[serde(default, deserialize_with = "text")]
    pub eps: Option<String>,
    pub dataset: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub arch: Option<String>,
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    /// `cyclic`, `constant` or `piecewise`.
    pub lr_schedule: Option<String>,
    pub lr_max: Option<f64>,
    pub lr_peak: Option<f64>,
    pub lr_milestones: Option<Vec<f64>>,
    pub lr_gamma: Option<f64>,
    pub momentum: Option<f64>,
    pub cycle_momentum: Option<bool>,
    /// The study-file spelling of `--no-cycle-momentum`.
    #[serde(default)]
    pub no_cycle_momentum: bool,
    pub base_momentum: Option<f64>,
    pub attack_bn: Option<String>,
    pub weight_decay: Option<f64>,
    pub seed: Option<u64>,
    /// 0 = all.
    pub train_subset: Option<usize>,
    pub test_subset: Option<usize>,
    pub augment: Option<bool>,
    /// The study-file spelling of `--no-augment`.
    #[serde(default)]
    pub no_augment: bool,
    pub eval_pgd_steps: Option<usize>,
    #[serde(default)]
    pub save_every_epoch: bool,
    pub name: Option<String>,
    pub device: Option<String>,
    pub dtype: Option<String>,
    /// Steps between monitor points: a number, `auto` (the default) or 0 (off).
    #[serde(default, deserialize_with = "text")]
    pub monitor_every: Option<String>,
    /// Signal names (a study file may give a list).
    #[serde(default, deserialize_with = "names")]
    pub monitor_signals: Option<Vec<String>>,
    pub monitor_probe: Option<usize>,
    /// `RUN` or `RUN@EPOCH`: the transfer signal's reference model.
    pub monitor_ref: Option<String>,
    /// `SIGNAL[:THRESHOLD]`: stop when that signal's detector fires.
    pub early_stop: Option<String>,
    /// The method's own flags (`--steps`, `--alpha`, …), read by the method (train/<method>.rs).
    #[serde(skip)]
    pub method_flags: Flags,
}

/// A string, or a number written as one.
fn text<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum T {
        S(String),
        I(i64),
        F(f64),
    }
    Ok(Option::<T>::deserialize(d)?.map(|t| match t {
        T::S(s) => s,
        T::I(i) => i.to_string(),
        T::F(f) => f.to_string(),
    }))
}

/// A list of names: a TOML list, or one string of comma-separated names (as the command line gives it).
fn names<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum L {
        One(String),
        Many(Vec<String>),
    }
    Ok(Option::<L>::deserialize(d)?.map(|l| match l {
        L::One(s) => split_names(&s),
        L::Many(v) => v,
    }))
}

/// `a, b,c` → [a, b, c], empty parts dropped.
pub fn split_names(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

/// A flag's value in a study file as the command line would give it: lists comma-joined; `None` for a switch
/// set to `false` (not given).
pub fn flag_text(v: &toml::Value, at: &str) -> Result<Option<String>> {
    Ok(Some(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(true) => "true".into(),
        toml::Value::Boolean(false) => return Ok(None),
        toml::Value::Array(items) => {
            let mut parts = Vec::new();
            for x in items {
                if let Some(t) = flag_text(x, at)? {
                    parts.push(t);
                }
            }
            parts.join(",")
        }
        other => {
            return Err(CovfError::spec(
                at,
                format!("{other}: expected a string, number, true/false or a list of them"),
            ))
        }
    }))
}

impl TrainSettings {
    /// Settings from a study file's table (`at` names it in errors: `runs.fgsm`). Keys that are method flags
    /// go to `method_flags`; the rest must be settings, an unknown key is refused with its path.
    pub fn from_toml(table: &toml::Table, at: &str) -> Result<TrainSettings> {
        let flags = all_flags();
        let mut rest = toml::Table::new();
        let mut method_flags = Flags::default();
        for (k, v) in table {
            if flags.iter().any(|(f, _)| f.name == k) {
                // A method flag takes one value: a list is refused here, not joined.
                if v.is_array() {
                    return Err(CovfError::spec(
                        format!("{at}.{k}"),
                        format!("{v}: expected a string, number or true/false"),
                    ));
                }
                let Some(value) = flag_text(v, &format!("{at}.{k}"))? else {
                    continue;
                };
                method_flags.set(k, value);
            } else {
                rest.insert(k.clone(), v.clone());
            }
        }
        let mut s: TrainSettings = rest
            .try_into()
            .map_err(|e: toml::de::Error| CovfError::spec(at, e.message().to_string()))?;
        s.method_flags = method_flags;
        Ok(s)
    }

    /// The validated spec, every default filled in.
    pub fn resolve(&self) -> Result<TrainSpec> {
        let dataset = DatasetKind::parse(self.dataset.as_deref().unwrap_or("fmnist"))?;
        let small = matches!(dataset, DatasetKind::FashionMnist | DatasetKind::Mnist);
        let eps = Eps::parse(self.eps.as_deref().unwrap_or(dataset.default_eps()))?;
        let arch = match &self.arch {
            Some(s) => Arch::parse(s)?,
            None if small => Arch::PreActTiny,
            None => Arch::PreAct18,
        };
        let def = lookup(self.method.as_deref().unwrap_or("fgsm"))?;
        if !def.trainable() {
            return Err(CovfError::spec("method", format!("'{}' cannot be trained", def.name())));
        }
        let method = def.configure(&self.method_flags, &Defaults { dataset, eps: &eps })?;
        let requested_epochs = self.epochs.unwrap_or(match dataset {
            DatasetKind::FashionMnist => fmnist_defaults::EPOCHS,
            DatasetKind::Mnist => MNIST_EPOCHS,
            _ => CIFAR_EPOCHS,
        });
        let epochs = method.epochs(requested_epochs);
        let lr_max = self.lr_max.unwrap_or(if dataset == DatasetKind::FashionMnist {
            fmnist_defaults::LR_MAX
        } else {
            LR_MAX
        });
        let schedule = match self.lr_schedule.as_deref().unwrap_or("cyclic") {
            "cyclic" => LrSchedule::Cyclic {
                max: lr_max,
                peak: self.lr_peak.unwrap_or(0.5),
                epochs,
            },
            "constant" => LrSchedule::Constant { lr: lr_max },
            "piecewise" => LrSchedule::Piecewise {
                lr: lr_max,
                milestones: self.lr_milestones.clone().unwrap_or_else(|| vec![0.5, 0.75]),
                gamma: self.lr_gamma.unwrap_or(0.1),
                epochs,
            },
            other => {
                return Err(CovfError::spec(
                    "lr schedule",
                    format!("'{other}': use cyclic, constant or piecewise"),
                ))
            }
        };
        let augment = match (self.augment, self.no_augment) {
            (_, true) | (Some(false), _) => Augment::none(),
            (Some(true), false) => match dataset.default_augment() {
                aug if aug.is_none() => Augment { pad: 2, flip: false },
                aug => aug,
            },
            (None, false) => dataset.default_augment(),
        };
        let precision = Precision::parse(self.dtype.as_deref().unwrap_or("f32"))?;
        let attack_bn = match &self.attack_bn {
            Some(s) => AttackBn::parse(s)?,
            None => method.reference_attack_bn(),
        };
        let cyclic = matches!(schedule, LrSchedule::Cyclic { .. });
        if self.cycle_momentum == Some(true) && !self.no_cycle_momentum && !cyclic {
            return Err(CovfError::spec(
                "cycle momentum",
                "--cycle-momentum needs --lr-schedule cyclic".to_string(),
            ));
        }
        let cycles = cyclic && !self.no_cycle_momentum && self.cycle_momentum != Some(false);
        let cycle_momentum = cycles.then_some(self.base_momentum.unwrap_or(0.8));
        let seed = self.seed.unwrap_or(0);
        let name = self.name.clone().unwrap_or_else(|| {
            let base = TrainSpec::default_name(&method, dataset, arch, &eps, seed);
            // A mixed-precision run is another experiment: it must not resume or reuse the f32 run.
            match precision {
                Precision::F32 => base,
                p => format!("{base}-{}", p.name()),
            }
        });
        let spec = TrainSpec {
            name,
            method,
            dataset,
            data_dir: self.data_dir.clone(),
            arch,
            eval: EpochEvalSpec {
                test_subset: self.test_subset.unwrap_or(1000),
                pgd_steps: self.eval_pgd_steps.unwrap_or(10),
                pgd_alpha: eps.scaled(2.0 / 255.0),
                probe_steps: 5,
                probe_drop: 0.2,
            },
            eps,
            epochs,
            batch_size: self.batch_size.unwrap_or(128),
            schedule,
            momentum: self.momentum.unwrap_or(0.9),
            cycle_momentum,
            weight_decay: self.weight_decay.unwrap_or(5e-4),
            seed,
            train_subset: self.train_subset.filter(|&n| n > 0),
            augment,
            attack_bn,
            save_every_epoch: self.save_every_epoch,
            device: self.device.clone().unwrap_or_else(|| "cpu".into()),
            precision,
            monitor: MonitorSpec::new(
                Every::parse(self.monitor_every.as_deref().unwrap_or("auto"))?,
                self.monitor_signals.as_deref(),
                self.monitor_probe.unwrap_or(DEFAULT_PROBE),
                self.monitor_ref.clone(),
            )?,
            early_stop: self.early_stop.as_deref().map(Rule::parse).transpose()?,
        };
        spec.validate()?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{apart, free, pgd};

    fn toml(text: &str) -> Result<TrainSpec> {
        TrainSettings::from_toml(&text.parse::<toml::Table>().unwrap(), "runs.x")?.resolve()
    }

    #[test]
    fn fashion_mnist_defaults_are_the_co_setting_and_others_keep_theirs() {
        let s = TrainSettings::default().resolve().unwrap();
        assert_eq!(s.name, "fgsm-fmnist-preact-tiny-eps0.15-s0");
        assert_eq!(s.eps.value, 0.15);
        assert_eq!((s.epochs, s.train_subset, s.arch), (4, None, Arch::PreActTiny));
        assert!(matches!(s.schedule, LrSchedule::Cyclic { max, .. } if max == 0.3));
        // As fast_adversarial: attacks in train mode, momentum cycling 0.9 → 0.8 → 0.9.
        assert_eq!(
            (s.attack_bn, s.momentum, s.cycle_momentum),
            (AttackBn::Train, 0.9, Some(0.8))
        );
        assert_eq!(s.method.alpha(), Some(0.15));
        assert_eq!(toml("method = 'atta'").unwrap().attack_bn, AttackBn::Eval);
        let b = toml("attack-bn = 'batch'\nno-cycle-momentum = true").unwrap();
        assert_eq!((b.attack_bn, b.cycle_momentum), (AttackBn::Batch, None));
        assert_eq!(toml("lr-schedule = 'constant'").unwrap().cycle_momentum, None);
        assert!(toml("lr-schedule = 'constant'\ncycle-momentum = true").is_err());
        let m = toml("dataset = 'mnist'").unwrap();
        assert_eq!((m.eps.value, m.epochs, m.train_subset), (0.3, 10, None));
        assert!(matches!(m.schedule, LrSchedule::Cyclic { max, .. } if max == 0.2));
        let c = toml("dataset = 'cifar10'\nlr-max = 0.1").unwrap();
        assert_eq!((c.epochs, c.arch), (30, Arch::PreAct18));
        assert!(matches!(c.schedule, LrSchedule::Cyclic { max, .. } if max == 0.1));
    }

    #[test]
    fn method_flags_reach_the_method_and_free_divides_the_epoch_budget() {
        let p = toml("method = 'pgd'\nsteps = 7\nalpha = '1/255'\neps = 0.1").unwrap();
        let c = p.method.config::<pgd::Pgd>().unwrap();
        assert_eq!((c.steps, c.alpha, c.restarts), (7, 1.0 / 255.0, 1));
        assert_eq!(p.name, "pgd7-fmnist-preact-tiny-eps0.1-s0");
        assert_eq!(
            toml("method = 'free'").unwrap().epochs,
            1,
            "4 epochs / 8 replays, rounded up"
        );
        let f = toml("method = 'free'\nepochs = 10\nreplays = 4").unwrap();
        assert_eq!((f.epochs, f.method.config::<free::Free>().unwrap().replays), (3, 4));
        assert!(matches!(f.schedule, LrSchedule::Cyclic { epochs: 3, .. }));
        assert_eq!(toml("method = 'apart'\nepochs = 10").unwrap().epochs, 10);
    }

    #[test]
    fn apart_defaults_follow_the_dataset() {
        let m = toml("method = 'apart'").unwrap();
        let c = m.method.config::<apart::Apart>().unwrap();
        assert_eq!((c.alpha_init, c.init_scale), (0.075, 0.075));
        assert_eq!((c.alpha_lr, c.alpha_l2), (apart::SMALL_ALPHA_LR, apart::SMALL_L2));
        let m = toml("method = 'apart-simple'\ndataset = 'cifar10'").unwrap();
        assert_eq!(m.name, "apart-simple-cifar10-preact18-eps8-255-s0");
        let s = toml("method = 'apart'\nno-init = true").unwrap();
        assert_eq!(s.method.label(), "apart-no-init");
    }

    #[test]
    fn bad_keys_and_values_are_refused_with_their_path() {
        let e = toml("lr-maxx = 0.1").unwrap_err().to_string();
        assert!(e.contains("runs.x") && e.contains("lr-maxx"), "{e}");
        let e = toml("method = 'pgd'\nsteps = 'many'").unwrap_err().to_string();
        assert!(e.contains("--steps") && e.contains("many"), "{e}");
        let e = toml("method = 'fgsm'\nalpha = [1]").unwrap_err().to_string();
        assert!(e.contains("runs.x.alpha"), "{e}");
        assert!(toml("method = 'external'").is_err());
        assert!(toml("method = 'sgd'").unwrap_err().to_string().contains("fgsm"));
    }
}
