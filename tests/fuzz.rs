//! Property-based fuzzing of covf's parsers of untrusted bytes: IDX, CIFAR binary, and checkpoints
//! (safetensors + covf metadata, then loading into a model). None may panic, whatever the input.
//!
//! Inputs are valid files mutated (bit flips, overwritten bytes, truncation, insertions, deletions,
//! spliced length fields) plus plain random bytes, so most cases get past the magic numbers and reach
//! the deeper checks. `COVF_FUZZ_CASES` sets the cases per target (default 2,000: the CI smoke);
//! docs/reliability.md gives the command for a full run.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{Device, Tensor};
use covf::data::{cifar, idx, DatasetKind};
use covf::models::{self, Arch, ArchSpec};
use covf::run::checkpoint::{self, Checkpoint, FORMAT};
use covf::testing::catch_quietly;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

fn cases() -> u32 {
    std::env::var("COVF_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    /// A big-endian or little-endian u32/u64 written over a field: lengths and dimensions.
    Word(usize, u64, bool),
}

fn mutation(near: usize) -> impl Strategy<Value = Mutation> {
    // Half of the positions fall in the first `near` bytes, where the headers are.
    let pos = prop_oneof![0..near, any::<usize>()];
    let word = prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::from(u32::MAX)),
        Just(u64::MAX),
        Just(1 << 31),
        0u64..100_000
    ];
    prop_oneof![
        (pos.clone(), 0u8..8).prop_map(|(p, b)| Mutation::Flip(p, b)),
        (pos.clone(), any::<u8>()).prop_map(|(p, v)| Mutation::Set(p, v)),
        any::<usize>().prop_map(Mutation::Truncate),
        (pos.clone(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(p, v)| Mutation::Insert(p, v)),
        (pos.clone(), 1usize..64).prop_map(|(p, n)| Mutation::Delete(p, n)),
        (pos, word, any::<bool>()).prop_map(|(p, w, be)| Mutation::Word(p, w, be)),
    ]
}

fn apply(seed: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in muts {
        let n = b.len().max(1);
        match m {
            Mutation::Flip(p, bit) => {
                if let Some(x) = b.get_mut(p % n) {
                    *x ^= 1 << bit;
                }
            }
            Mutation::Set(p, v) => {
                if let Some(x) = b.get_mut(p % n) {
                    *x = *v;
                }
            }
            Mutation::Truncate(l) => b.truncate(l % n),
            Mutation::Insert(p, v) => {
                let at = p % (b.len() + 1);
                b.splice(at..at, v.iter().copied());
            }
            Mutation::Delete(p, k) => {
                let at = p % n;
                let end = (at + k).min(b.len());
                if at < end {
                    b.drain(at..end);
                }
            }
            Mutation::Word(p, w, be) => {
                let bytes: Vec<u8> = if *be {
                    (*w as u32).to_be_bytes().to_vec()
                } else {
                    w.to_le_bytes().to_vec()
                };
                let at = p % n;
                for (i, x) in bytes.iter().enumerate() {
                    if let Some(y) = b.get_mut(at + i) {
                        *y = *x;
                    }
                }
            }
        }
    }
    b
}

/// Mutated seeds (most cases) and random bytes.
fn inputs(seeds: Vec<Vec<u8>>, near: usize) -> impl Strategy<Value = Vec<u8>> {
    let k = seeds.len();
    let mutated = (0..k, prop::collection::vec(mutation(near), 1..5)).prop_map(move |(i, m)| apply(&seeds[i], &m));
    prop_oneof![
        6 => mutated,
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

/// How far a parser got with one input.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reach {
    /// Refused at the first check (magic number, header length, record size).
    Surface,
    /// Past the header into the checks of dimensions, lengths, labels or tensors, then refused.
    Deep,
    Accepted,
}

/// Runs `check` on `cases()` inputs; a panic is a failure (proptest then shrinks it to a minimal input).
/// A harness whose inputs never get past the first check tests nothing: at least `min_deep` of the inputs
/// must reach the deep checks (accepted ones included), or the mutations need rethinking.
fn fuzz(name: &str, strategy: impl Strategy<Value = Vec<u8>>, min_deep: f64, check: impl Fn(&[u8]) -> Reach) {
    let n = cases();
    let deep = AtomicUsize::new(0);
    let accepted = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |bytes| {
        let reach = catch_quietly(|| check(&bytes))
            .map_err(|_| TestCaseError::fail(format!("{name}: panic on {} bytes", bytes.len())))?;
        if reach != Reach::Surface {
            deep.fetch_add(1, Ordering::Relaxed);
        }
        if reach == Reach::Accepted {
            accepted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    let (deep, accepted) = (deep.load(Ordering::Relaxed), accepted.load(Ordering::Relaxed));
    eprintln!("fuzz {name}: {n} inputs, {deep} reached the deep checks, {accepted} accepted; no panic");
    assert!(
        deep as f64 >= min_deep * f64::from(n),
        "{name}: only {deep} of {n} inputs got past the first check (expected ≥ {:.0}%)",
        100.0 * min_deep
    );
}

#[test]
fn idx_parser_never_panics() {
    let images = idx::encode_idx(&[3, 4, 4], &(0..48).map(|i| i as u8).collect::<Vec<_>>());
    let labels = idx::encode_idx(&[3], &[1, 2, 9]);
    let rank4 = idx::encode_idx(&[1, 2, 2, 2], &[7; 8]);
    fuzz(
        "idx",
        inputs(vec![images, labels, rank4], 24),
        // About 46% (912 and 971 of 2,000 in two runs; proptest draws new inputs each run).
        0.3,
        |b| match idx::parse_idx(b, Path::new("fuzz.idx")) {
            Ok(a) => {
                assert_eq!(a.dims.iter().product::<usize>(), a.data.len());
                Reach::Accepted
            }
            // Past the magic number and rank: the dimensions and the data length were checked.
            Err(_) if b.len() >= 4 && b[..3] == [0, 0, 8] && (1..=4).contains(&b[3]) => Reach::Deep,
            Err(_) => Reach::Surface,
        },
    );
}

#[test]
fn cifar_parser_never_panics() {
    let rec = |label: &[u8]| {
        let mut r = label.to_vec();
        r.extend((0..cifar::CIFAR_PIXELS).map(|i| (i % 251) as u8));
        r
    };
    let c10 = [rec(&[3]), rec(&[9])].concat();
    let c100 = [rec(&[1, 42]), rec(&[19, 99])].concat();
    // About 21% reach the label checks (420 and 443 of 2,000 in two runs).
    fuzz("cifar", inputs(vec![c10, c100], 8), 0.12, |b| {
        let mut any = false;
        for (label_bytes, classes) in [(1, 10), (2, 100)] {
            if let Ok((images, labels)) = cifar::parse_cifar(b, label_bytes, classes, Path::new("fuzz.bin")) {
                assert_eq!(images.len(), labels.len() * cifar::CIFAR_PIXELS);
                assert!(labels.iter().all(|&l| (l as usize) < classes));
                any = true;
            }
        }
        // A whole number of records of either kind reaches the label checks.
        let records = [1, 2]
            .iter()
            .any(|l| !b.is_empty() && b.len() % (l + cifar::CIFAR_PIXELS) == 0);
        match (any, records) {
            (true, _) => Reach::Accepted,
            (false, true) => Reach::Deep,
            (false, false) => Reach::Surface,
        }
    });
}

#[test]
fn checkpoint_loader_never_panics() {
    let dev = Device::Cpu;
    let arch = ArchSpec::new(Arch::PreActTiny, DatasetKind::FashionMnist);
    let (_, store) = models::build(&arch, &dev, 0).unwrap();
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("epoch".to_string(), "3".to_string());
    meta.insert("arch".to_string(), "preact-tiny".to_string());
    let real = checkpoint::encode(&store.snapshot(), &meta).unwrap();
    // A small file with every dtype covf reads, so mutations reach tensor decoding often.
    let mut small = BTreeMap::new();
    small.insert("a".to_string(), Tensor::new(&[1f32, 2., 3.], &dev).unwrap());
    small.insert("b".to_string(), Tensor::new(&[[1i64, 2], [3, 4]], &dev).unwrap());
    small.insert("c".to_string(), Tensor::new(&[0.5f64], &dev).unwrap());
    let small = checkpoint::encode(&small, &meta).unwrap();
    let origin = Path::new("fuzz.safetensors");
    // About 19% get a parsable header (389 and 381 of 2,000 in two runs).
    fuzz("checkpoint", inputs(vec![real, small], 600), 0.12, |b| {
        // A header that parses takes the input on to the tensors' offsets, shapes and dtypes.
        let mut header_ok = false;
        if b.len() >= 8 {
            let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
            if let Some(h) = b.get(8..8usize.saturating_add(n)) {
                header_ok = checkpoint::header_metadata(h, origin).is_ok();
            }
        }
        let refused = if header_ok { Reach::Deep } else { Reach::Surface };
        let Ok((tensors, meta)) = checkpoint::decode(b, origin, &dev) else {
            return refused;
        };
        // One model for every case: a load that fails half-way leaves other values, never other shapes.
        let loaded = store.load(&tensors, origin).is_ok();
        if Checkpoint::from_parts(tensors, meta, origin).is_ok() && loaded {
            Reach::Accepted
        } else {
            Reach::Deep
        }
    });
}
