//! `covf bench`: images per second of the training steps, as a table or JSON.

use clap::Args;

use covf::bench::{self, BenchRow, BenchSpec};
use covf::data::DatasetKind;
use covf::device::parse_device;
use covf::models::{Arch, ArchSpec};
use covf::train::{Eps, MethodSpec};
use covf::CovfError;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  covf bench                                              # tiny net, 1x28x28, batch 128: clean, fgsm, pgd10
  covf bench --arch preact18 --dataset cifar10 --steps fgsm --iters 5
  covf bench --threads 1 --json > bench.json")]
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
    /// Training steps to time: clean, fgsm, fgsm-rs, pgdN (PGD-N training, e.g. pgd10).
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
}

fn parse_step(s: &str, eps: f32) -> Result<MethodSpec, CovfError> {
    let s = s.trim().to_ascii_lowercase();
    Ok(match s.as_str() {
        "clean" => MethodSpec::Clean,
        "fgsm" => MethodSpec::Fgsm { alpha: eps },
        "fgsm-rs" => MethodSpec::FgsmRs { alpha: 1.25 * eps },
        _ => match s.strip_prefix("pgd").map(str::parse::<usize>) {
            Some(Ok(steps)) if steps >= 1 => MethodSpec::Pgd {
                steps,
                alpha: eps / 4.0,
                restarts: 1,
            },
            _ => {
                return Err(CovfError::spec(
                    "bench step",
                    format!("'{s}': expected clean, fgsm, fgsm-rs or pgdN (N ≥ 1, e.g. pgd10)"),
                ))
            }
        },
    })
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
    let eps = Eps::parse(&a.eps)?.value;
    let methods = a
        .steps
        .iter()
        .map(|s| parse_step(s, eps))
        .collect::<Result<Vec<_>, _>>()?;
    let spec = BenchSpec {
        arch,
        batch: a.batch_size,
        eps,
        methods,
        warmup: a.warmup,
        iters: a.iters,
        seed: 0,
    };
    let json = a.json;
    if !json {
        println!(
            "{:<8} {:<12} {:<9} {:>5} {:>7} {:>5} {:>10} {:>10} {:>10}",
            "step", "arch", "input", "batch", "threads", "iters", "median ms", "min ms", "img/s"
        );
    }
    let print = |r: &BenchRow| {
        if !json {
            println!(
                "{:<8} {:<12} {:<9} {:>5} {:>7} {:>5} {:>10.1} {:>10.1} {:>10.1}",
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
    let rows = bench::run(&spec, &dev, print)?;
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
        assert_eq!(parse_step("clean", 0.1).unwrap(), MethodSpec::Clean);
        assert!(matches!(
            parse_step("PGD7", 0.1).unwrap(),
            MethodSpec::Pgd { steps: 7, .. }
        ));
        assert!(parse_step("pgd0", 0.1).is_err());
        assert!(parse_step("apart2", 0.1).is_err());
        assert_eq!(parse_shape("3x32x32").unwrap(), (3, 32));
        assert!(parse_shape("3x32x30").is_err());
        assert!(parse_shape("3x32").is_err());
    }
}
