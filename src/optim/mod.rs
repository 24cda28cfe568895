//! Optimisation: SGD with momentum and weight decay, learning-rate schedules, mixed-precision loss scaling.

pub mod scaler;
pub mod schedule;
pub mod sgd;

pub use scaler::{Grads, LossScaler, Precision};
pub use schedule::LrSchedule;
pub use sgd::Sgd;
