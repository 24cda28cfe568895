//! Command-line types (clap) and their conversion into the library's validated specs.

pub mod analyze;
pub mod bench;
pub mod eval;
pub mod figures;
pub mod predict;
pub mod runs;
pub mod study;
pub mod train;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "covf",
    version,
    about = "Diagnose catastrophic overfitting in fast adversarial training",
    long_about = "covf trains convnets adversarially (FGSM, FGSM-RS, PGD, ...), saves a checkpoint every epoch \
and measures, epoch by epoch, whether the model catastrophically overfits.",
    after_help = "Examples:\n  covf train --method fgsm --save-every-epoch\n  covf train --method pgd --steps 10 --save-every-epoch\n  covf runs\n  covf eval RUN --attacks clean,pgd20,cw,gaussian,aa"
)]
pub struct Cli {
    /// Directory holding one sub-directory per run.
    #[arg(long, global = true, default_value = "checkpoints", value_name = "DIR")]
    pub checkpoints: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model adversarially, checkpointing every epoch.
    Train(Box<train::TrainArgs>),
    /// List runs: method, dataset, arch, epochs done, last metrics.
    Runs(runs::RunsArgs),
    /// Images per second of the training steps (clean, FGSM, PGD-N) on synthetic data.
    Bench(bench::BenchArgs),
    /// Robust accuracy of checkpoints: clean, PGD-N, C&W, noise, AutoAttack; the paper's Table 3.
    Eval(Box<eval::EvalArgs>),
    /// Logits of one checkpoint on test images, with the inputs, as safetensors (framework cross-checks).
    Predict(predict::PredictArgs),
    /// Stored evaluation results as a table (Markdown, CSV, LaTeX or text).
    Table(eval::TableArgs),
    /// Per-epoch analyses: transfer strength, strength gap, random baselines, curves, step sizes, CO verdict.
    Analyze(analyze::AnalyzeArgs),
    /// Figures 1–5 (PNG and SVG) from a study's analysis tables.
    Figures(figures::FiguresArgs),
    /// A whole study from one TOML file: train the runs, analyse, draw the figures (resumable).
    Study(study::StudyArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(a) => train::run(*a, &cli.checkpoints),
        Command::Runs(a) => runs::run(a, &cli.checkpoints),
        Command::Bench(a) => bench::run(a),
        Command::Eval(a) => eval::run(*a, &cli.checkpoints),
        Command::Predict(a) => predict::run(a, &cli.checkpoints),
        Command::Table(a) => eval::run_table(a, &cli.checkpoints),
        Command::Analyze(a) => analyze::run(a, &cli.checkpoints),
        Command::Figures(a) => figures::run(a),
        Command::Study(a) => study::run(a, &cli.checkpoints),
    }
}
