//! The `covf` binary: parse the command line, run, print the error chain; exit 2 on bad input.

use clap::Parser;

mod cli;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (libmimalloc-sys names no constant for it; a test
/// checks the index by its default).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory mapped instead of returning it to the OS a second after it is freed (mimalloc v3's
/// default). A training step frees and reallocates the same few-MB activation and gradient buffers many times
/// a second (candle's backward allocates a zeroed buffer for every gradient it accumulates): with purging,
/// reallocations faulted their pages in again (2.2 million minor faults and ~8 s of page clearing on the main
/// thread in a default FGSM run). Without: 1% of the faults, 2% less wall time on one epoch (median of five
/// alternated pairs), 7% more peak memory (docs/bench.md). `MIMALLOC_PURGE_DELAY` set by the user wins.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide allocator option; mimalloc reads options atomically.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

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
    keep_freed_memory();
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_option_is_the_one_we_set() {
        // SAFETY: reads allocator options.
        let (delay, before) = unsafe {
            (
                libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY),
                libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY - 1),
            )
        };
        // mimalloc v3's options.c: purge_delay 1000 ms; the option before it, the deprecated eager-commit
        // delay, 1.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(delay, 1000);
        }
        assert_eq!(before, 1);
    }
}
