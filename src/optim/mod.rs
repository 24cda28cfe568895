//! Optimisation: SGD with momentum and weight decay, and learning-rate schedules.

pub mod schedule;
pub mod sgd;

pub use schedule::LrSchedule;
pub use sgd::Sgd;
