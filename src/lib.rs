//! covf: diagnose catastrophic overfitting in fast adversarial training (library; the CLI is a thin layer on top).

pub mod analysis;
pub mod attacks;
pub mod bench;
pub mod data;
pub mod device;
pub mod eps;
pub mod error;
pub mod eval;
pub mod exact_json;
pub mod figures;
pub mod fit;
pub mod models;
pub mod monitor;
pub mod optim;
pub mod rng;
pub mod run;
pub mod runs;
pub mod study;
pub mod testing;
pub mod train;

pub use error::{CovfError, Result};
