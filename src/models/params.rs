//! The parameter store: every weight and buffer of a model by its PyTorch name, seeded init, load and save views.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor, Var};

use crate::error::{CovfError, Result};
use crate::rng::Rng;

/// How a new parameter is initialised (PyTorch's defaults for the layer types covf uses).
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// U(-b, b) with b = 1/sqrt(fan_in): PyTorch's default for conv and linear (kaiming_uniform, a = sqrt 5).
    FanInUniform {
        fan_in: usize,
    },
    Const(f32),
}

/// Names of buffers that are state, not trainable parameters.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var") || name.ends_with("num_batches_tracked")
}

/// All tensors of a model, by name, sorted (a BTreeMap: iteration order is stable, unlike candle's VarMap).
#[derive(Debug, Clone)]
pub struct ParamStore {
    vars: BTreeMap<String, Var>,
    device: Device,
}

impl ParamStore {
    pub fn new(device: &Device) -> Self {
        ParamStore {
            vars: BTreeMap::new(),
            device: device.clone(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Creates a parameter; draws come from `rng` in creation order, so the same seed gives the same model.
    pub fn create(&mut self, name: &str, shape: &[usize], init: Init, rng: &mut Rng) -> Result<Var> {
        if self.vars.contains_key(name) {
            return Err(CovfError::spec("model", format!("parameter {name} defined twice")));
        }
        let t = match init {
            Init::FanInUniform { fan_in } => {
                let b = 1.0 / (fan_in.max(1) as f32).sqrt();
                rng.uniform_tensor(shape, -b, b, &self.device)?
            }
            Init::Const(v) => Tensor::full(v, shape, &self.device)?,
        };
        let var = Var::from_tensor(&t)?;
        self.vars.insert(name.to_string(), var.clone());
        Ok(var)
    }

    /// An integer counter buffer (BatchNorm's `num_batches_tracked`), kept for PyTorch compatibility.
    pub fn create_counter(&mut self, name: &str) -> Result<Var> {
        let var = Var::from_tensor(&Tensor::new(0i64, &self.device)?)?;
        self.vars.insert(name.to_string(), var.clone());
        Ok(var)
    }

    pub fn get(&self, name: &str) -> Option<&Var> {
        self.vars.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.vars.iter()
    }

    /// Trainable parameters (buffers excluded), sorted by name.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.vars
            .iter()
            .filter(|(n, _)| !is_buffer(n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    }

    pub fn num_trainable(&self) -> usize {
        self.trainable().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Detached copies of every tensor, for saving.
    pub fn snapshot(&self) -> BTreeMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// A copy of every tensor that later steps (which update the variables in place) leave alone.
    pub fn snapshot_copy(&self) -> Result<BTreeMap<String, Tensor>> {
        self.vars
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?)))
            .collect()
    }

    /// Overwrites every tensor from `src`; names, shapes and dtypes must match exactly.
    pub fn load(&self, src: &HashMap<String, Tensor>, origin: &std::path::Path) -> Result<()> {
        let names = |v: &mut Vec<&String>| {
            v.sort();
            let shown: Vec<&str> = v.iter().take(6).map(|s| s.as_str()).collect();
            let more = if v.len() > 6 {
                format!(" and {} more", v.len() - 6)
            } else {
                String::new()
            };
            format!("{}{more}", shown.join(", "))
        };
        let mut missing: Vec<&String> = self.vars.keys().filter(|k| !src.contains_key(*k)).collect();
        let mut extra: Vec<&String> = src.keys().filter(|k| !self.vars.contains_key(*k)).collect();
        if !missing.is_empty() || !extra.is_empty() {
            let prefixed = extra.iter().any(|k| k.starts_with("module."));
            let mut parts = Vec::new();
            if !missing.is_empty() {
                parts.push(format!(
                    "missing {} tensor(s) the model needs: {}",
                    missing.len(),
                    names(&mut missing)
                ));
            }
            if !extra.is_empty() {
                parts.push(format!(
                    "{} tensor(s) not part of this model: {}",
                    extra.len(),
                    names(&mut extra)
                ));
            }
            let hint = if prefixed {
                "names start with 'module.' (saved from nn.DataParallel): save model.module.state_dict() instead"
            } else {
                "another architecture? (--arch)"
            };
            return Err(CovfError::checkpoint(origin, format!("{}; {hint}", parts.join("; "))));
        }
        for (name, var) in &self.vars {
            let t = &src[name];
            if t.dims() != var.dims() {
                return Err(CovfError::checkpoint(
                    origin,
                    format!("{name} has shape {:?}, the model expects {:?}", t.dims(), var.dims()),
                ));
            }
            let t = if t.dtype() == var.dtype() {
                t.clone()
            } else if var.dtype() == DType::I64 || t.dtype() == DType::I64 {
                return Err(CovfError::checkpoint(
                    origin,
                    format!("{name} has dtype {:?}, expected {:?}", t.dtype(), var.dtype()),
                ));
            } else {
                t.to_dtype(var.dtype())?
            };
            var.set(&t.to_device(&self.device)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::data::DatasetKind;
    use crate::models::{build, Arch, ArchSpec};
    use candle_core::Device;

    #[test]
    fn a_checkpoint_of_another_class_count_is_refused_with_the_tensor_named() {
        let dev = Device::Cpu;
        let ten = ArchSpec::new(Arch::PreActTiny, DatasetKind::FashionMnist);
        let hundred = ten.clone().with_input(1, 28, 100).unwrap();
        let (_, src) = build(&ten, &dev, 0).unwrap();
        let (_, dst) = build(&hundred, &dev, 0).unwrap();
        let tensors = src.snapshot().into_iter().collect();
        let e = dst
            .load(&tensors, std::path::Path::new("ten.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ten.safetensors") && e.contains("linear") && e.contains("100"),
            "{e}"
        );
    }
}
