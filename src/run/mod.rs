//! A run's shared vocabulary, below training, evaluation and the analyses: its validated spec (ε, method,
//! settings as `run.json` saves them), its directory and checkpoint files, a lone model file, its metric
//! tables, and the data sets and model it uses.

pub mod cache;
pub mod checkpoint;
pub mod metrics;
pub mod model_file;
pub mod sets;
pub mod settings;
pub mod spec;
pub mod table;

pub use checkpoint::{Checkpoint, RunDir};
pub use sets::{load_model, DATA_SEED};
pub use settings::TrainSettings;
pub use spec::{AttackBn, EpochEvalSpec, Eps, MethodSpec, TrainSpec};
