//! `external`: a model covf did not train (a plain state dict, or a checkpoint from before covf embedded
//! its spec). It can be evaluated and analysed, never trained, and has no generator to offer.

use serde::{Deserialize, Serialize};

use super::method::{Defaults, Flags, Meta, Method};
use super::{MethodEnv, TrainMethod};
use crate::attacks::Generator;
use crate::error::{CovfError, Result};

pub struct External;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalConfig {
    /// What tables call its method.
    pub label: String,
}

fn not_trained(label: &str, what: &str) -> CovfError {
    CovfError::spec("method", format!("'{label}' is a model covf did not train: {what}"))
}

impl Method for External {
    type Config = ExternalConfig;
    const NAME: &'static str = "external";
    const HELP: &'static str = "A model covf did not train";
    const DISPLAY: &'static str = "external";
    const TRAINABLE: bool = false;

    fn config(_: &Flags, _: &Defaults) -> Result<ExternalConfig> {
        Err(not_trained("external", "there is nothing to configure"))
    }

    fn label(c: &ExternalConfig) -> String {
        c.label.clone()
    }

    /// Any label not claimed by a method covf trains.
    fn display(_: &str) -> Option<String> {
        None
    }

    fn flags_for_label(_: &str) -> Option<Flags> {
        None
    }

    fn build(c: &ExternalConfig, _: &MethodEnv) -> Result<Box<dyn TrainMethod>> {
        Err(not_trained(&c.label, "there is no training method to build"))
    }

    fn generator(c: &ExternalConfig, _: f32, _: &Meta) -> Result<Generator> {
        Err(not_trained(
            &c.label,
            "its training perturbation is unknown, so analyses that need it (own-generator transfer, gap) do not \
             apply to it",
        ))
    }
}
