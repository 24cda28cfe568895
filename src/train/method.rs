//! What covf knows about a training method, declared next to its step: the `Method` trait each method
//! file implements (name, help, flags and their defaults per dataset, label, display name and colour,
//! validation, its training step, its perturbation generator for the analyses, its bench name), and
//! `MethodSpec`, one method with its parameters as run.json stores it.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{AttackBn, MethodEnv, TrainMethod, METHODS};
use crate::attacks::Generator;
use crate::data::DatasetKind;
use crate::eps::Eps;
use crate::error::{CovfError, Result};
use crate::optim::Precision;

/// A method's own command-line flag (`--steps`), also its key in a study file (`steps = 10`).
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    /// kebab-case, without the dashes.
    pub name: &'static str,
    pub help: &'static str,
    /// `Some(placeholder)` for a flag with a value, `None` for a switch.
    pub value: Option<&'static str>,
    /// This method's default, for the help text (empty for a switch).
    pub default: &'static str,
}

/// Method flags as given, by name: raw text (a switch is `true`), parsed by the method that reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags(BTreeMap<String, String>);

impl Flags {
    pub fn set(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        self.0.insert(name.to_string(), value.into());
        self
    }

    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.set(name, value);
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// A number or count, if given.
    pub fn parse<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>> {
        self.get(name)
            .map(|v| {
                v.trim()
                    .parse::<T>()
                    .map_err(|_| CovfError::spec(format!("--{name}"), format!("'{v}' is not a valid value")))
            })
            .transpose()
    }

    /// A step size in pixel units, written as ε is (`2/255` or `0.01`).
    pub fn pixels(&self, name: &str) -> Result<Option<f32>> {
        self.get(name)
            .map(|v| {
                Eps::parse(v).map(|e| e.value).map_err(|_| {
                    CovfError::spec(
                        format!("--{name}"),
                        format!("'{v}': write it as 2/255 or 0.01, in (0, 1]"),
                    )
                })
            })
            .transpose()
    }

    /// A switch: given (and not `false`).
    pub fn switch(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v != "false")
    }
}

/// What a method's defaults may depend on.
#[derive(Debug, Clone, Copy)]
pub struct Defaults<'a> {
    pub dataset: DatasetKind,
    pub eps: &'a Eps,
}

impl Defaults<'_> {
    /// The 28×28 grey-scale sets (Fashion-MNIST, MNIST), where the default runs are a few epochs long.
    pub fn small_images(&self) -> bool {
        matches!(self.dataset, DatasetKind::FashionMnist | DatasetKind::Mnist)
    }
}

/// Checkpoint metadata, where a generator with learned parameters reads them (APART's step sizes).
pub type Meta = BTreeMap<String, String>;

/// A training method. One file implements it next to the method's step; one line in `train::METHODS`
/// makes it known to `covf train`, study files, `covf bench`, the analyses and the figures.
pub trait Method: Send + Sync + 'static {
    /// The method's parameters, as run.json stores them (field order is the file's).
    type Config: Serialize + DeserializeOwned + Clone + fmt::Debug + Send + Sync + 'static;
    /// `--method` value and run.json's `name`.
    const NAME: &'static str;
    /// One line for `covf train --help`.
    const HELP: &'static str;
    /// How figures and reports name it (`FGSM`).
    const DISPLAY: &'static str;
    /// A fixed slot in the figures' palette, so the method keeps its colour in every figure; `None`: the
    /// next free one.
    const COLOUR: Option<usize> = None;
    /// Flags beyond the shared training settings.
    const FLAGS: &'static [Flag] = &[];
    /// False for a model covf did not train (it can be evaluated and analysed only).
    const TRAINABLE: bool = true;

    /// The configuration from the given flags, defaults filled in.
    fn config(flags: &Flags, d: &Defaults) -> Result<Self::Config>;
    /// The short label of run names and tables (`pgd10`, `apart-no-init`).
    fn label(_c: &Self::Config) -> String {
        Self::NAME.into()
    }
    /// The display name of one of this method's labels, `None` for other labels.
    fn display(label: &str) -> Option<String> {
        (label == Self::NAME).then(|| Self::DISPLAY.into())
    }
    /// The flags that make `covf train` build the method a label names (`pgd7` → `--steps 7`), so that
    /// `covf bench --steps` takes labels; `None` when the label is not this method's.
    fn flags_for_label(label: &str) -> Option<Flags> {
        (label == Self::NAME).then(Flags::default)
    }
    /// The fixed input step α, for methods that have one.
    fn alpha(_c: &Self::Config) -> Option<f32> {
        None
    }
    fn validate(_c: &Self::Config) -> Result<()> {
        Ok(())
    }
    /// Batch norm of the training attack in the method's reference code (`--attack-bn`'s default).
    fn attack_bn(_c: &Self::Config) -> AttackBn {
        AttackBn::Train
    }
    /// The run's epochs for `requested` epochs of budget (Free divides them by its replays).
    fn epochs(_c: &Self::Config, requested: usize) -> usize {
        requested
    }
    /// Refuses compute dtypes the method cannot train in.
    fn check_precision(_c: &Self::Config, _p: Precision) -> Result<()> {
        Ok(())
    }
    fn build(c: &Self::Config, env: &MethodEnv) -> Result<Box<dyn TrainMethod>>;
    /// f_A for the analyses: the method's perturbation generator at a checkpoint with metadata `meta`.
    fn generator(c: &Self::Config, eps: f32, meta: &Meta) -> Result<Generator>;
    /// Whether the generator starts from a learned per-example initialisation (APART's ω).
    fn learned_init(_c: &Self::Config) -> bool {
        false
    }
}

/// A method as the registry holds it (object-safe; `Registered<M>` implements it for every `Method`).
pub trait MethodDef: Send + Sync {
    fn name(&self) -> &'static str;
    fn help(&self) -> &'static str;
    fn flags(&self) -> &'static [Flag];
    fn trainable(&self) -> bool;
    fn colour(&self) -> Option<usize>;
    fn display(&self, label: &str) -> Option<String>;
    fn flags_for_label(&self, label: &str) -> Option<Flags>;
    fn configure(&self, flags: &Flags, d: &Defaults) -> Result<MethodSpec>;
    /// From the parameters run.json stores.
    fn configure_stored(&self, params: serde_json::Map<String, serde_json::Value>) -> Result<MethodSpec>;
}

/// The registry entry of method `M`.
pub struct Registered<M>(PhantomData<fn() -> M>);

impl<M> Registered<M> {
    pub const fn new() -> Self {
        Registered(PhantomData)
    }
}

impl<M> Default for Registered<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Method> MethodDef for Registered<M> {
    fn name(&self) -> &'static str {
        M::NAME
    }
    fn help(&self) -> &'static str {
        M::HELP
    }
    fn flags(&self) -> &'static [Flag] {
        M::FLAGS
    }
    fn trainable(&self) -> bool {
        M::TRAINABLE
    }
    fn colour(&self) -> Option<usize> {
        M::COLOUR
    }
    fn display(&self, label: &str) -> Option<String> {
        M::display(label)
    }
    fn flags_for_label(&self, label: &str) -> Option<Flags> {
        M::flags_for_label(label)
    }
    fn configure(&self, flags: &Flags, d: &Defaults) -> Result<MethodSpec> {
        Ok(MethodSpec::new::<M>(M::config(flags, d)?))
    }
    fn configure_stored(&self, params: serde_json::Map<String, serde_json::Value>) -> Result<MethodSpec> {
        let c: M::Config = serde_json::from_value(serde_json::Value::Object(params))
            .map_err(|e| CovfError::spec("method", format!("{}'s parameters: {e}", M::NAME)))?;
        Ok(MethodSpec::new::<M>(c))
    }
}

/// The object-safe face of one configured method.
trait Configured: Send + Sync {
    fn name(&self) -> &'static str;
    fn trainable(&self) -> bool;
    fn label(&self) -> String;
    fn alpha(&self) -> Option<f32>;
    fn validate(&self) -> Result<()>;
    fn attack_bn(&self) -> AttackBn;
    fn epochs(&self, requested: usize) -> usize;
    fn check_precision(&self, p: Precision) -> Result<()>;
    fn build(&self, env: &MethodEnv) -> Result<Box<dyn TrainMethod>>;
    fn generator(&self, eps: f32, meta: &Meta) -> Result<Generator>;
    fn learned_init(&self) -> bool;
    fn config_json(&self) -> Result<String>;
    fn as_any(&self) -> &dyn Any;
}

struct With<M: Method>(M::Config);

impl<M: Method> Configured for With<M> {
    fn name(&self) -> &'static str {
        M::NAME
    }
    fn trainable(&self) -> bool {
        M::TRAINABLE
    }
    fn label(&self) -> String {
        M::label(&self.0)
    }
    fn alpha(&self) -> Option<f32> {
        M::alpha(&self.0)
    }
    fn validate(&self) -> Result<()> {
        M::validate(&self.0)
    }
    fn attack_bn(&self) -> AttackBn {
        M::attack_bn(&self.0)
    }
    fn epochs(&self, requested: usize) -> usize {
        M::epochs(&self.0, requested)
    }
    fn check_precision(&self, p: Precision) -> Result<()> {
        M::check_precision(&self.0, p)
    }
    fn build(&self, env: &MethodEnv) -> Result<Box<dyn TrainMethod>> {
        M::build(&self.0, env)
    }
    fn generator(&self, eps: f32, meta: &Meta) -> Result<Generator> {
        M::generator(&self.0, eps, meta)
    }
    fn learned_init(&self) -> bool {
        M::learned_init(&self.0)
    }
    fn config_json(&self) -> Result<String> {
        Ok(serde_json::to_string(&self.0)?)
    }
    fn as_any(&self) -> &dyn Any {
        &self.0
    }
}

/// One training method with its parameters (α in pixel units). Stored as `{"name": …, <parameters>}`.
#[derive(Clone)]
pub struct MethodSpec(Arc<dyn Configured>);

impl MethodSpec {
    pub fn new<M: Method>(c: M::Config) -> MethodSpec {
        MethodSpec(Arc::new(With::<M>(c)))
    }

    /// The configuration, when the method is `M`.
    pub fn config<M: Method>(&self) -> Option<&M::Config> {
        if self.0.name() != M::NAME {
            return None;
        }
        self.0.as_any().downcast_ref::<M::Config>()
    }

    /// A model covf did not train (a plain state dict, or a checkpoint from before covf embedded its spec):
    /// it can be evaluated and analysed, not trained; `label` is what tables call its method.
    pub fn external(label: &str) -> MethodSpec {
        MethodSpec::new::<super::external::External>(super::external::ExternalConfig {
            label: label.to_string(),
        })
    }

    /// The method's name (`pgd`), as `--method` and run.json write it.
    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    /// The method's short label, used in run names and tables: `fgsm`, `fgsm-rs`, `pgd10`.
    pub fn label(&self) -> String {
        self.0.label()
    }

    pub fn trainable(&self) -> bool {
        self.0.trainable()
    }

    /// The fixed input step α, for methods that have one.
    pub fn alpha(&self) -> Option<f32> {
        self.0.alpha()
    }

    pub fn validate(&self) -> Result<()> {
        self.0.validate()
    }

    /// What the method's reference code does with batch norm while it attacks.
    pub fn reference_attack_bn(&self) -> AttackBn {
        self.0.attack_bn()
    }

    pub fn epochs(&self, requested: usize) -> usize {
        self.0.epochs(requested)
    }

    pub fn check_precision(&self, p: Precision) -> Result<()> {
        self.0.check_precision(p)
    }

    /// The training step.
    pub fn build(&self, env: &MethodEnv) -> Result<Box<dyn TrainMethod>> {
        self.0.build(env)
    }

    /// The method's perturbation generator at a checkpoint with metadata `meta`.
    pub fn generator(&self, eps: f32, meta: &Meta) -> Result<Generator> {
        self.0.generator(eps, meta)
    }

    pub fn learned_init(&self) -> bool {
        self.0.learned_init()
    }

    /// The parameters in the order run.json writes them, f32 values as f32 text (`0.15`, not
    /// `0.15000000596046448`).
    pub fn params(&self) -> Vec<(String, serde_json::Value)> {
        // Config types are plain structs of numbers and flags: serialising one cannot fail.
        self.0
            .config_json()
            .ok()
            .and_then(|text| serde_json::from_str::<Ordered>(&text).ok())
            .map(|o| o.0)
            .unwrap_or_default()
    }
}

impl PartialEq for MethodSpec {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name() && self.params() == other.params()
    }
}

impl fmt::Debug for MethodSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct(self.name());
        for (k, v) in self.params() {
            s.field(&k, &v);
        }
        s.finish()
    }
}

/// A JSON object's entries in file order.
struct Ordered(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<Ordered, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = m.next_entry::<String, serde_json::Value>()? {
                    v.push(e);
                }
                Ok(Ordered(v))
            }
        }
        d.deserialize_map(V)
    }
}

impl Serialize for MethodSpec {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let params = self.params();
        let mut m = s.serialize_map(Some(1 + params.len()))?;
        m.serialize_entry("name", self.name())?;
        for (k, v) in &params {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for MethodSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        let mut params = serde_json::Map::new();
        let mut name = None;
        for (k, v) in Ordered::deserialize(d)?.0 {
            if k == "name" {
                name = v.as_str().map(str::to_string);
            } else {
                params.insert(k, v);
            }
        }
        let name = name.ok_or_else(|| D::Error::custom("a method needs a \"name\""))?;
        let def = lookup(&name).map_err(D::Error::custom)?;
        def.configure_stored(params).map_err(D::Error::custom)
    }
}

/// The registered method called `name`.
pub fn lookup(name: &str) -> Result<&'static dyn MethodDef> {
    METHODS.iter().copied().find(|m| m.name() == name).ok_or_else(|| {
        CovfError::spec(
            "method",
            format!("'{name}' is not a method covf knows: {}", trainable_names().join(", ")),
        )
    })
}

/// Methods `covf train --method` offers, in registry order.
pub fn trainable_names() -> Vec<&'static str> {
    METHODS.iter().filter(|m| m.trainable()).map(|m| m.name()).collect()
}

/// The method a table label belongs to, and its display name (`pgd10` → PGD, `PGD-10`).
pub fn by_label(label: &str) -> Option<(&'static dyn MethodDef, String)> {
    METHODS.iter().copied().find_map(|m| m.display(label).map(|d| (m, d)))
}

/// The method spec `covf train` builds for a label with no other flags (`pgd7`, `apart-no-init`).
pub fn spec_for_label(label: &str, d: &Defaults) -> Result<MethodSpec> {
    for m in METHODS.iter().filter(|m| m.trainable()) {
        if let Some(flags) = m.flags_for_label(label) {
            return m.configure(&flags, d);
        }
    }
    Err(CovfError::spec(
        "method label",
        format!("'{label}' names no method (e.g. fgsm, pgd10, free8, apart-no-init)"),
    ))
}

/// Every method flag once, with the methods that read it and their defaults, for `--help`.
pub fn all_flags() -> Vec<(Flag, Vec<(&'static str, &'static str)>)> {
    let mut out: Vec<(Flag, Vec<(&'static str, &'static str)>)> = Vec::new();
    for m in METHODS.iter().filter(|m| m.trainable()) {
        for f in m.flags() {
            match out.iter_mut().find(|(g, _)| g.name == f.name) {
                Some((_, users)) => users.push((m.name(), f.default)),
                None => out.push((*f, vec![(m.name(), f.default)])),
            }
        }
    }
    out
}

/// A counted label (`pgd10`): the count after `prefix`, when the rest is digits (≥ 1).
pub fn counted(label: &str, prefix: &str) -> Option<usize> {
    label
        .strip_prefix(prefix)
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_digit()))
        .and_then(|k| k.parse().ok())
        .filter(|&n| n >= 1)
}

/// A step size must be positive and finite.
pub fn positive_alpha(method: &str, a: f32) -> Result<()> {
    if a.is_finite() && a > 0.0 {
        Ok(())
    } else {
        Err(CovfError::spec("alpha", format!("{method}: {a} must be positive")))
    }
}

/// `--alpha`, as every method with a fixed input step declares it.
pub const fn alpha_flag(default: &'static str) -> Flag {
    Flag {
        name: "alpha",
        help: "Input step size α in pixel units (2/255 or 0.01)",
        value: Some("A"),
        default,
    }
}

/// `--steps`, the attack steps of multi-step methods.
pub const STEPS: Flag = Flag {
    name: "steps",
    help: "Attack steps",
    value: Some("N"),
    default: "10",
};

/// α = ε/4 at any ε (2/255 at 8/255): the multi-step methods' default step.
pub fn quarter_eps(d: &Defaults) -> f32 {
    d.eps.scaled(2.0 / 255.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{gradalign, pgd};

    fn fmnist(eps: &Eps) -> Defaults<'_> {
        Defaults {
            dataset: DatasetKind::FashionMnist,
            eps,
        }
    }

    #[test]
    fn every_method_round_trips_through_run_json_with_its_label() {
        let eps = Eps::parse("0.15").unwrap();
        for m in METHODS.iter().filter(|m| m.trainable()) {
            let spec = m.configure(&Flags::default(), &fmnist(&eps)).unwrap();
            let text = serde_json::to_string(&spec).unwrap();
            assert!(text.starts_with(&format!("{{\"name\":\"{}\"", m.name())), "{text}");
            let back: MethodSpec = serde_json::from_str(&text).unwrap();
            assert_eq!(back, spec, "{text}");
            assert_eq!(serde_json::to_string(&back).unwrap(), text);
            // Its label names it back, for figures and `covf bench`.
            let (def, _) = by_label(&spec.label()).unwrap();
            assert_eq!(def.name(), m.name());
            assert_eq!(spec_for_label(&spec.label(), &fmnist(&eps)).unwrap(), spec);
        }
    }

    #[test]
    fn run_json_of_earlier_covf_versions_still_reads() {
        // As the tagged enum wrote it: f32 values in their shortest form, fields in declaration order.
        let text = r#"{"name":"pgd","steps":10,"alpha":0.0375,"restarts":1}"#;
        let spec: MethodSpec = serde_json::from_str(text).unwrap();
        assert_eq!(spec.label(), "pgd10");
        assert_eq!(spec.config::<pgd::Pgd>().unwrap().alpha, 0.0375);
        assert_eq!(serde_json::to_string(&spec).unwrap(), text);
        // GradAlign before `through_clean` existed differentiated both gradients.
        let g: MethodSpec = serde_json::from_str(r#"{"name":"gradalign","lambda":0.2,"fd_radius":0.01}"#).unwrap();
        assert!(g.config::<gradalign::GradAlign>().unwrap().through_clean);
        let e = serde_json::from_str::<MethodSpec>(r#"{"name":"sgd"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'sgd' is not a method") && e.contains("elle"), "{e}");
        assert!(serde_json::from_str::<MethodSpec>(r#"{"steps":3}"#).is_err());
        assert!(serde_json::from_str::<MethodSpec>(r#"{"name":"pgd","steps":"x"}"#).is_err());
    }

    #[test]
    fn flags_parse_with_the_flag_named_in_errors() {
        let f = Flags::default()
            .with("steps", "7")
            .with("alpha", "2/255")
            .with("no-init", "true");
        assert_eq!(f.parse::<usize>("steps").unwrap(), Some(7));
        assert_eq!(f.parse::<usize>("restarts").unwrap(), None);
        assert_eq!(f.pixels("alpha").unwrap(), Some(2.0 / 255.0));
        assert!(f.switch("no-init") && !f.switch("no-layerwise"));
        let bad = Flags::default().with("steps", "many").with("alpha", "2");
        assert!(bad.parse::<usize>("steps").unwrap_err().to_string().contains("--steps"));
        assert!(bad.pixels("alpha").unwrap_err().to_string().contains("--alpha"));
        assert_eq!(counted("pgd10", "pgd"), Some(10));
        assert_eq!(counted("pgd0", "pgd"), None);
        assert_eq!(counted("pgd", "pgd"), None);
    }

    #[test]
    fn shared_flags_are_declared_once_with_every_user_and_default() {
        let flags = all_flags();
        let (_, alpha_users) = flags.iter().find(|(f, _)| f.name == "alpha").unwrap();
        assert!(alpha_users.contains(&("fgsm", "ε")) && alpha_users.contains(&("pgd", "ε/4")));
        let names: Vec<&str> = flags.iter().map(|(f, _)| f.name).collect();
        let mut dedup = names.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(names.len(), dedup.len(), "{names:?}");
        assert!(!trainable_names().contains(&"external"));
    }
}
