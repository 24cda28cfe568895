//! Model architectures: the PreAct ResNet family (tiny CPU default, PreActResNet18) and WideResNet-34-10.

pub mod bn;
mod conv3x3;
pub mod conv_direct;
mod kernels;
pub mod layers;
pub mod params;
pub mod preact;
pub mod tape;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

pub use layers::Mode;
pub use params::ParamStore;
pub use preact::PreActResNet;
pub use tape::{Backward, Need, Traced};

use crate::data::DatasetKind;
use crate::error::{CovfError, Result};
use crate::rng::Rng;

/// Anything that maps pixel-space inputs to logits; attacks only need this.
pub trait Classifier {
    fn logits(&self, x: &Tensor, mode: Mode) -> Result<Tensor>;

    /// The forward at `x`, ready for one backward that computes what `need` asks for (candle's graph
    /// unless the model has its own backward).
    fn trace(&self, x: &Tensor, mode: Mode, need: Need) -> Result<Traced> {
        tape::graph_trace(x, &[], need, |x, _| self.logits(x, mode))
    }
}

impl Classifier for PreActResNet {
    fn logits(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_perturbed(x, &[], mode)
    }

    fn trace(&self, x: &Tensor, mode: Mode, need: Need) -> Result<Traced> {
        self.trace_perturbed(x, &[], mode, need)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arch {
    /// CPU default: 16-32-64 channels, one block a stage (see `ArchSpec::new`).
    #[serde(rename = "preact-tiny")]
    PreActTiny,
    #[serde(rename = "preact18")]
    PreAct18,
    #[serde(rename = "wrn34-10")]
    Wrn34_10,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::PreActTiny => "preact-tiny",
            Arch::PreAct18 => "preact18",
            Arch::Wrn34_10 => "wrn34-10",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "preact-tiny" | "tiny" => Ok(Arch::PreActTiny),
            "preact18" | "preactresnet18" | "preact-resnet18" => Ok(Arch::PreAct18),
            "wrn34-10" | "wrn-34-10" => Ok(Arch::Wrn34_10),
            other => Err(CovfError::spec(
                "arch",
                format!("unknown architecture '{other}': expected preact-tiny, preact18 or wrn34-10"),
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamingKind {
    /// PyTorch's common PreActResNet18 (`layer1.0.bn1`, `shortcut.0`, `bn`, `linear`).
    PreAct,
    /// The common WideResNet (TRADES/MART: `block1.layer.0.bn1`, `convShortcut`, `bn1`, `fc`).
    Wrn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    pub kind: NamingKind,
    pub stem: &'static str,
    pub shortcut: &'static str,
    pub final_bn: &'static str,
    pub head: &'static str,
}

/// A fully resolved architecture: widths, depths, strides, input and class count, normalization.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchSpec {
    pub arch: Arch,
    pub in_channels: usize,
    pub image_size: usize,
    pub num_classes: usize,
    pub stem_width: usize,
    pub widths: Vec<usize>,
    pub depths: Vec<usize>,
    pub strides: Vec<usize>,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub naming: Naming,
}

impl ArchSpec {
    pub fn new(arch: Arch, data: DatasetKind) -> Self {
        let (c, h, _) = data.shape();
        let (mean, std) = data.normalization();
        let preact = Naming {
            kind: NamingKind::PreAct,
            stem: "conv1",
            shortcut: "shortcut.0",
            final_bn: "bn",
            head: "linear",
        };
        let (stem_width, widths, depths, strides, naming) = match arch {
            Arch::PreActTiny => (16, vec![16, 32, 64], vec![1, 1, 1], vec![1, 2, 2], preact),
            Arch::PreAct18 => (64, vec![64, 128, 256, 512], vec![2, 2, 2, 2], vec![1, 2, 2, 2], preact),
            Arch::Wrn34_10 => (
                16,
                vec![160, 320, 640],
                vec![5, 5, 5],
                vec![1, 2, 2],
                Naming {
                    kind: NamingKind::Wrn,
                    stem: "conv1",
                    shortcut: "convShortcut",
                    final_bn: "bn1",
                    head: "fc",
                },
            ),
        };
        ArchSpec {
            arch,
            in_channels: c,
            image_size: h,
            num_classes: data.num_classes(),
            stem_width,
            widths,
            depths,
            strides,
            mean,
            std,
            naming,
        }
    }
}

impl ArchSpec {
    /// The same architecture on another input shape (`c` channels, `size`×`size`), with identity
    /// normalization: for benchmarks on shapes no built-in dataset has.
    pub fn with_input(mut self, c: usize, size: usize, classes: usize) -> Result<Self> {
        if c == 0 || size < 4 || classes < 2 {
            return Err(CovfError::spec(
                "input shape",
                format!("{c}x{size}x{size} with {classes} classes: need ≥ 1 channel, ≥ 4 pixels, ≥ 2 classes"),
            ));
        }
        self.in_channels = c;
        self.image_size = size;
        self.num_classes = classes;
        self.mean = vec![0.0; c];
        self.std = vec![1.0; c];
        Ok(self)
    }
}

/// Builds a freshly initialised model (seeded) and its parameter store.
pub fn build(spec: &ArchSpec, device: &candle_core::Device, seed: u64) -> Result<(PreActResNet, ParamStore)> {
    let mut ps = ParamStore::new(device);
    let mut rng = Rng::derive(seed, "init", 0);
    let m = PreActResNet::new(spec, &mut ps, &mut rng)?;
    Ok((m, ps))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    #[test]
    fn preact18_has_pytorch_names_and_parameter_count() {
        let spec = ArchSpec::new(Arch::PreAct18, DatasetKind::Cifar10);
        let (_, ps) = build(&spec, &Device::Cpu, 0).unwrap();
        for n in [
            "conv1.weight",
            "layer1.0.bn1.weight",
            "layer1.0.bn1.running_mean",
            "layer1.0.bn1.num_batches_tracked",
            "layer1.0.conv1.weight",
            "layer2.0.shortcut.0.weight",
            "layer4.1.conv2.weight",
            "bn.running_var",
            "linear.weight",
            "linear.bias",
        ] {
            assert!(ps.get(n).is_some(), "{n} missing");
        }
        assert!(ps.get("layer1.0.shortcut.0.weight").is_none());
        // fast_adversarial's PreActResNet18 (final `bn` included; kuangliu's has none and 1,024 fewer)
        // for CIFAR-10, summed layer by layer: 11,172,170.
        assert_eq!(ps.num_trainable(), 11_172_170);
    }

    #[test]
    fn wrn34_10_parameter_count() {
        let spec = ArchSpec::new(Arch::Wrn34_10, DatasetKind::Cifar10);
        let (_, ps) = build(&spec, &Device::Cpu, 0).unwrap();
        assert!(ps.get("block1.layer.0.convShortcut.weight").is_some());
        assert!(ps.get("block1.layer.1.convShortcut.weight").is_none());
        assert!(ps.get("fc.bias").is_some() && ps.get("bn1.running_mean").is_some());
        // The TRADES WideResNet(depth=34, widen_factor=10) has 46,160,474 trainable parameters.
        assert_eq!(ps.num_trainable(), 46_160_474);
    }

    #[test]
    fn same_seed_same_model_and_shapes_fit() {
        let spec = ArchSpec::new(Arch::PreActTiny, DatasetKind::FashionMnist);
        let (m, a) = build(&spec, &Device::Cpu, 3).unwrap();
        let (_, b) = build(&spec, &Device::Cpu, 3).unwrap();
        let (_, c) = build(&spec, &Device::Cpu, 4).unwrap();
        let w = |p: &ParamStore| {
            p.get("layer2.0.conv1.weight")
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(w(&a), w(&b));
        assert_ne!(w(&a), w(&c));
        let x = Tensor::zeros((2, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(m.logits(&x, Mode::EVAL).unwrap().dims(), &[2, 10]);
        assert_eq!(
            m.block_shapes(2, 28, 28),
            vec![[2, 16, 28, 28], [2, 16, 28, 28], [2, 32, 14, 14]]
        );
    }

    #[test]
    fn zero_block_perturbation_gives_the_branch_input_gradient() {
        // d loss / d delta_i at delta_i = 0 must equal a finite difference of the loss along a direction.
        let dev = Device::Cpu;
        let spec = ArchSpec::new(Arch::PreActTiny, DatasetKind::FashionMnist);
        let (m, _) = build(&spec, &dev, 1).unwrap();
        let mut rng = Rng::new(9);
        let x = rng.uniform_tensor(&[4, 1, 28, 28], 0.0, 1.0, &dev).unwrap();
        let y = Tensor::new(&[0u32, 1, 2, 3], &dev).unwrap();
        let shapes = m.block_shapes(4, 28, 28);
        let vars: Vec<Var> = shapes
            .iter()
            .map(|s| Var::zeros(s.as_slice(), DType::F32, &dev).unwrap())
            .collect();
        let deltas: Vec<Option<Tensor>> = vars.iter().map(|v| Some(v.as_tensor().clone())).collect();
        let loss = candle_nn::loss::cross_entropy(&m.forward_perturbed(&x, &deltas, Mode::EVAL).unwrap(), &y).unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(vars[2].as_tensor()).unwrap();
        let dir = rng.uniform_tensor(&shapes[2], -1.0, 1.0, &dev).unwrap();
        let h = 1e-2;
        let lp = |s: f64| {
            let mut d: Vec<Option<Tensor>> = vec![None, None, Some((&dir * s).unwrap())];
            d.truncate(3);
            candle_nn::loss::cross_entropy(&m.forward_perturbed(&x, &d, Mode::EVAL).unwrap(), &y)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let fd = (lp(h) - lp(-h)) / (2.0 * h);
        let an = (g * &dir).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!((fd - an).abs() < 1e-3 * (1.0 + an.abs()), "fd {fd} vs analytic {an}");
    }
}
