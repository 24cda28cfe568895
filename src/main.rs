//! The `covf` binary: parse the command line, run, print the error chain; exit 2 on bad input.

use clap::Parser;

mod cli;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // candle runs its element-wise ops on a pool whose threads spin while they wait for work and whose
    // caller spins until they finish; when anything else uses the cores (a second run, the test harness)
    // the spinning threads starve each other: perf showed 55% of an AutoAttack run's samples in those
    // spin loops. covf's kernels parallelise with rayon (RAYON_NUM_THREADS, `covf bench --threads`);
    // candle's small element-wise ops run on the calling thread unless the user sets CANDLE_NUM_THREADS.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    // A write past the file-size limit (`ulimit -f`) raises SIGXFSZ, whose default action kills the
    // process without a word. Ignored, the write fails with EFBIG instead and covf reports it like a
    // full disk: the file at fault, nothing half-written, earlier checkpoints intact.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_IGN before any other thread exists.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        let user = e
            .downcast_ref::<covf::CovfError>()
            .is_some_and(covf::CovfError::is_user_error);
        std::process::exit(if user { 2 } else { 1 });
    }
}
