//! `covf bench`: images per second of the training steps, as a table or JSON.

use clap::Args;

use covf::bench::{self, BenchRow, BenchSpec};
use covf::data::DatasetKind;
use covf::device::parse_device;
use covf::models::{Arch, ArchSpec};
use covf::optim::Precision;
use covf::run::{Eps, MethodSpec};
use covf::train::method::spec_for_label;
use covf::train::Defaults;
use covf::CovfError;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  covf bench                                              # tiny net, 1x28x28, batch 128: clean, fgsm, pgd10
  covf bench --arch preact18 --dataset cifar10 --steps fgsm --iters 5
  covf bench --threads 1 --json > bench.json
  covf bench --steps fgsm --monitor                       # the FGSM step beside one monitor point per signal")]
pub struct BenchArgs {
    /// Architecture: preact-tiny, preact18, wrn34-10.
    #[arg(long, default_value = "preact-tiny")]
    pub arch: String,
    /// Input shape and class count come from this dataset (no data is read).
    #[arg(long, default_value = "fmnist")]
    pub dataset: String,
    /// Override the input shape, `CxHxW` with H = W (e.g. 3x32x32); identity normalization.
    #[arg(long, value_name = "CxHxW")]
    pub shape: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Training steps to time, with `covf train`'s defaults: clean, fgsm, fgsm-rs, pgdN, freeM (one step = M
    /// replays), attaK, sfgsm, apart, apart-simple, apart-no-layerwise, apart-no-init, gradalign, nfgsm.
    #[arg(long, value_delimiter = ',', default_value = "clean,fgsm,pgd10")]
    pub steps: Vec<String>,
    /// ε of the attacks (their cost does not depend on it).
    #[arg(long, default_value = "8/255")]
    pub eps: String,
    /// Worker threads (sets RAYON_NUM_THREADS) [default: one per physical core].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Untimed steps before timing.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed steps per method (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype of the timed steps: f32, bf16 or f16 (mixed precision, as `covf train --dtype`).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Also time one in-training monitor point per signal alone (monitor:<signal>) and with every signal
    /// together (monitor:all), the batch as the probe (docs/monitor.md).
    #[arg(long)]
    pub monitor: bool,
}

/// A step name → the method spec `covf train` would build for it on `dataset` at `eps` (same defaults): a
/// method's label (`fgsm`, `pgd10`, `free4`, `apart-no-init`, …), as each method's file reads its labels.
fn parse_step(s: &str, eps: &Eps, dataset: DatasetKind) -> Result<MethodSpec, CovfError> {
    spec_for_label(&s.trim().to_ascii_lowercase(), &Defaults { dataset, eps })
}

fn parse_shape(s: &str) -> Result<(usize, usize), CovfError> {
    let bad = || CovfError::spec("shape", format!("'{s}': expected CxHxW with H = W, e.g. 3x32x32"));
    let dims: Vec<usize> = s
        .split('x')
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    match dims.as_slice() {
        &[c, h, w] if h == w => Ok((c, h)),
        _ => Err(bad()),
    }
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    if let Some(t) = a.threads {
        if t == 0 {
            return Err(CovfError::spec("threads", "must be at least 1").into());
        }
        // candle and covf's own kernels both size their pools from this variable, read on first use;
        // nothing has run yet.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    let dev = parse_device(&a.device)?;
    let dataset = DatasetKind::parse(&a.dataset)?;
    let mut arch = ArchSpec::new(Arch::parse(&a.arch)?, dataset);
    if let Some(s) = &a.shape {
        let (c, size) = parse_shape(s)?;
        let classes = arch.num_classes;
        arch = arch.with_input(c, size, classes)?;
    }
    let eps = Eps::parse(&a.eps)?;
    let methods = a
        .steps
        .iter()
        .map(|s| parse_step(s, &eps, dataset))
        .collect::<Result<Vec<_>, _>>()?;
    let eps = eps.value;
    let spec = BenchSpec {
        arch,
        batch: a.batch_size,
        eps,
        methods,
        warmup: a.warmup,
        iters: a.iters,
        seed: 0,
        precision: Precision::parse(&a.dtype)?,
    };
    let json = a.json;
    if !json {
        println!(
            "{:<18} {:<12} {:<9} {:>5} {:>7} {:>5} {:>10} {:>10} {:>10}",
            "step", "arch", "input", "batch", "threads", "iters", "median ms", "min ms", "img/s"
        );
    }
    let print = |r: &BenchRow| {
        if !json {
            println!(
                "{:<18} {:<12} {:<9} {:>5} {:>7} {:>5} {:>10.1} {:>10.1} {:>10.1}",
                r.step,
                r.arch,
                r.input,
                r.batch,
                r.threads,
                r.iters,
                1e3 * r.median_s,
                1e3 * r.min_s,
                r.images_per_s
            );
        }
    };
    let mut rows = bench::run(&spec, &dev, print)?;
    if a.monitor {
        rows.extend(bench::run_monitor(&spec, &dev, print)?);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_shapes_parse() {
        let eps = Eps::parse("0.1").unwrap();
        let p = |s: &str| parse_step(s, &eps, DatasetKind::FashionMnist);
        for (step, label) in [
            ("clean", "clean"),
            ("PGD7", "pgd7"),
            ("free4", "free4"),
            ("free", "free8"),
            ("atta3", "atta3"),
            ("apart-no-init", "apart-no-init"),
            ("nfgsm", "nfgsm"),
        ] {
            assert_eq!(p(step).unwrap().label(), label, "{step}");
        }
        let c = p("apart-no-init").unwrap();
        let c = c.config::<covf::train::apart::Apart>().unwrap();
        assert!(!c.learned_init && c.layerwise);
        for bad in ["pgd0", "apart2", "free0", "attax", "sgd", "external"] {
            assert!(p(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_shape("3x32x32").unwrap(), (3, 32));
        assert!(parse_shape("3x32x30").is_err());
        assert!(parse_shape("3x32").is_err());
    }
}
