//! The `covf` binary: parse the command line, run, print the error chain; exit 2 on bad input.

use clap::Parser;

mod cli;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
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
