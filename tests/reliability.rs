//! Reliability of the real `covf` binary: SIGKILL at random moments (mid-epoch, mid-write) then resume,
//! bit-identical runs from one seed, hostile inputs refused with exit code 2 and no partial output, names
//! that try to leave checkpoints/ and analyses/.
//!
//! `COVF_KILL_RUNS` repeats the kill test with other kill schedules (default 1; docs/reliability.md).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use candle_core::Device;
use covf::run::checkpoint::RunDir;

mod common;
use common::{covf_code, covf_ok, require_fmnist, text};

/// Small training runs: 256 images, a short test evaluation (4 epochs unless the caller says otherwise).
const TINY: &[&str] = &[
    "--train-subset",
    "256",
    "--test-subset",
    "40",
    "--eval-pgd-steps",
    "3",
    "--batch-size",
    "64",
    "--save-every-epoch",
    "--monitor-every",
    "1",
    "--monitor-probe",
    "16",
    "--quiet",
];

fn tensors_of(p: &Path) -> Vec<(String, Vec<u8>)> {
    let (t, _) =
        covf::run::checkpoint::load_tensors(p, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut v: Vec<(String, Vec<u8>)> = t
        .into_iter()
        .map(|(k, t)| {
            let bytes: Vec<u8> = match t.dtype() {
                candle_core::DType::I64 => t
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<i64>()
                    .unwrap()
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
                _ => t
                    .to_dtype(candle_core::DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .flat_map(|x| x.to_bits().to_le_bytes())
                    .collect(),
            };
            (k, bytes)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Bitwise comparison of every tensor in two safetensors files.
fn same_tensors(a: &Path, b: &Path) -> bool {
    tensors_of(a) == tensors_of(b)
}

fn train(dir: &Path, name: &str, method: &[&str], extra: &[&str]) {
    let mut a = vec!["train", "--name", name];
    a.extend_from_slice(method);
    a.extend_from_slice(TINY);
    a.extend_from_slice(extra);
    if !extra.contains(&"--epochs") {
        a.extend_from_slice(&["--epochs", "4"]);
    }
    covf_ok(&a, dir);
}

/// A tiny deterministic generator for kill schedules (the test must be reproducible).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn temp_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|f| f.to_string_lossy().contains(".tmp-")))
                .collect()
        })
        .unwrap_or_default()
}

/// Every file a reader could pick up must be whole: checkpoints and the resume state decode, run.json
/// parses, the metric table reads.
fn assert_readable(run: &Path) {
    for e in std::fs::read_dir(run).unwrap().flatten() {
        let p = e.path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains(".tmp-") {
            continue;
        }
        if name.ends_with(".safetensors") {
            covf::run::checkpoint::load_tensors(&p, &Device::Cpu)
                .unwrap_or_else(|e| panic!("torn file after a kill: {e}"));
        }
        if name == "metrics.parquet" {
            covf::run::metrics::read_parquet(&p).unwrap_or_else(|e| panic!("torn metrics after a kill: {e}"));
        }
    }
    if run.join("run.json").is_file() {
        let r = RunDir::new(run.parent().unwrap(), run.file_name().unwrap().to_str().unwrap()).unwrap();
        r.read_spec().unwrap();
    }
}

#[derive(Default, Debug)]
struct Kills {
    at_random_times: usize,
    mid_write: usize,
    invocations: usize,
}

/// Waits for `child` to exit, or kills it when `kill_now` says so; true when it was killed.
fn wait_or_kill(child: &mut Child, mut kill_now: impl FnMut() -> bool) -> bool {
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if kill_now() {
            child.kill().unwrap(); // SIGKILL on Unix
            child.wait().unwrap();
            return true;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Trains `name` to completion while killing it with SIGKILL at moments drawn from `seed`: half at a
/// random time, half while a file is being written (its temporary file exists). After every kill the
/// run's files must all be readable and the committed epoch must not go back.
fn train_under_kills(dir: &Path, name: &str, method: &[&str], seed: u64) -> Kills {
    let run = dir.join("checkpoints").join(name);
    let mut rng = Lcg(seed);
    let mut kills = Kills::default();
    let mut committed = 0;
    loop {
        kills.invocations += 1;
        assert!(kills.invocations < 200, "{name}: no progress after {kills:?}");
        let mut args = vec!["train", "--name", name, "--resume"];
        args.extend_from_slice(method);
        args.extend_from_slice(TINY);
        args.extend_from_slice(&["--epochs", "4"]);
        let mut child = Command::new(env!("CARGO_BIN_EXE_covf"))
            .args(&args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mid_write = rng.below(2) == 0;
        let delay = Duration::from_millis(200 + rng.below(3000));
        // Mid-write kills strike during the k-th write seen in progress (checkpoints and resume states
        // take long enough to be seen; small tables mostly are not), so that some epochs get through.
        let kth = 1 + rng.below(6) as usize;
        let mut seen = std::collections::BTreeSet::new();
        let t0 = Instant::now();
        let killed = wait_or_kill(&mut child, || {
            if mid_write {
                seen.extend(temp_files(&run));
                seen.len() >= kth
            } else {
                t0.elapsed() >= delay
            }
        });
        if !killed {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
            break;
        }
        if mid_write {
            kills.mid_write += 1;
        } else {
            kills.at_random_times += 1;
        }
        if run.is_dir() {
            assert_readable(&run);
            let now = RunDir::new(&dir.join("checkpoints"), name)
                .unwrap()
                .completed_epochs()
                .unwrap();
            assert!(
                now >= committed,
                "{name}: committed epoch went back from {committed} to {now}"
            );
            committed = now;
        }
    }
    assert!(
        temp_files(&run).is_empty(),
        "temporary files left: {:?}",
        temp_files(&run)
    );
    kills
}

#[test]
fn sigkill_at_random_moments_never_leaves_a_torn_file_and_resumes_to_the_same_weights() {
    require_fmnist();
    let repeats: u64 = std::env::var("COVF_KILL_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut total = Kills::default();
    for (method, label) in [
        (&["--method", "fgsm"][..], "fgsm"),
        (&["--method", "apart"][..], "apart"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        train(dir.path(), "full", method, &[]);
        let full = dir.path().join("checkpoints/full");
        for r in 0..repeats {
            let name = format!("cut{r}");
            let k = train_under_kills(dir.path(), &name, method, 17 + r * 1000 + label.len() as u64);
            let cut = dir.path().join("checkpoints").join(&name);
            for e in 1..=4 {
                let f = format!("epoch-{e:03}.safetensors");
                assert!(
                    same_tensors(&full.join(&f), &cut.join(&f)),
                    "{label}: {f} differs after {k:?}"
                );
            }
            assert!(same_tensors(
                &full.join("train-state.safetensors"),
                &cut.join("train-state.safetensors")
            ));
            // Every epoch's metrics row is there exactly once, as after an uninterrupted run.
            let df = covf::run::metrics::read_parquet(&cut.join("metrics.parquet")).unwrap();
            let epochs: Vec<i64> = df
                .column("epoch")
                .unwrap()
                .cast(&polars::prelude::DataType::Int64)
                .unwrap()
                .i64()
                .unwrap()
                .into_no_null_iter()
                .collect();
            assert_eq!(epochs, [1, 2, 3, 4], "{label}");
            let full_df = covf::run::metrics::read_parquet(&full.join("metrics.parquet")).unwrap();
            for col in [
                "train_loss_adv",
                "test_acc_clean",
                "test_acc_pgd",
                "test_loss_pgd",
                "co_probe_acc",
            ] {
                let bits = |d: &polars::prelude::DataFrame| -> Vec<u64> {
                    d.column(col)
                        .unwrap()
                        .f64()
                        .unwrap()
                        .into_no_null_iter()
                        .map(f64::to_bits)
                        .collect()
                };
                assert_eq!(bits(&df), bits(&full_df), "{label}: metrics column {col}");
            }
            // The monitor's table (a point every step here) too, to the last digit.
            let monitor = std::fs::read_to_string(cut.join("monitor.csv")).unwrap();
            let want = std::fs::read_to_string(full.join("monitor.csv")).unwrap();
            assert_eq!(want.lines().count(), 1 + 17 * 10, "{label}: 17 points of 10 metrics");
            assert_eq!(
                monitor.replace(&format!("\n{name},"), "\nfull,"),
                want,
                "{label}: monitor.csv"
            );
            if label == "apart" {
                // Identical but for the run's name, to the last digit.
                let steps = std::fs::read_to_string(cut.join("step-sizes.csv")).unwrap();
                let want = std::fs::read_to_string(full.join("step-sizes.csv")).unwrap();
                assert_eq!(steps.replace(&format!("\n{name},"), "\nfull,"), want);
            }
            eprintln!("{label} run {r}: {k:?}");
            total.at_random_times += k.at_random_times;
            total.mid_write += k.mid_write;
            total.invocations += k.invocations;
        }
    }
    eprintln!("kills survived: {total:?}");
    assert!(
        total.at_random_times + total.mid_write >= 4,
        "too few kills to mean anything: {total:?}"
    );
}

#[test]
fn same_seed_gives_bit_identical_checkpoints_and_another_seed_does_not() {
    require_fmnist();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, seed) in [("a", "0"), ("b", "0"), ("c", "1")] {
        train(d, name, &["--method", "apart"], &["--seed", seed]);
    }
    let ck = |n: &str, f: &str| d.join("checkpoints").join(n).join(f);
    for e in 1..=4 {
        let f = format!("epoch-{e:03}.safetensors");
        assert!(
            same_tensors(&ck("a", &f), &ck("b", &f)),
            "{f}: same seed, different weights"
        );
    }
    assert!(same_tensors(
        &ck("a", "train-state.safetensors"),
        &ck("b", "train-state.safetensors")
    ));
    // The metadata differs only by the run's name (also inside the embedded training spec).
    let meta = |n: &str| {
        let mut m = covf::run::checkpoint::read_metadata(&ck(n, "epoch-004.safetensors")).unwrap();
        m.remove("run");
        let mut spec: serde_json::Value = serde_json::from_str(&m.remove("train_spec").unwrap()).unwrap();
        assert_eq!(spec["name"], n);
        spec["name"] = serde_json::Value::Null;
        m.insert("train_spec".into(), spec.to_string());
        m
    };
    assert_eq!(meta("a"), meta("b"));
    assert!(!same_tensors(
        &ck("a", "epoch-004.safetensors"),
        &ck("c", "epoch-004.safetensors")
    ));
}

#[test]
fn eval_and_analyze_survive_sigkill_and_finish_with_the_uninterrupted_results() {
    require_fmnist();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Two identical runs (same seed): one evaluated straight through, one under kills.
    for name in ["x", "y"] {
        train(d, name, &["--method", "fgsm"], &["--epochs", "2"]);
    }
    let eval = |run: &str| -> Vec<String> {
        vec![
            "eval".into(),
            run.into(),
            "--n".into(),
            "24".into(),
            "--epochs".into(),
            "all".into(),
            "--attacks".into(),
            "clean,pgd5,aa".into(),
            // Small batches: AutoAttack saves its state after each, so kills interrupt it mid-stage.
            "--batch-size".into(),
            "6".into(),
            "--quiet".into(),
        ]
    };
    let analyze = |run: &str, study: &str| -> Vec<String> {
        vec![
            "analyze".into(),
            "gap".into(),
            "--study".into(),
            study.into(),
            "--ref".into(),
            "pgd10".into(),
            "--runs".into(),
            run.into(),
            "--n".into(),
            "24".into(),
            "--batch-size".into(),
            "8".into(),
        ]
    };
    let run_args = |a: &[String]| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        covf_ok(&a, d);
    };
    run_args(&eval("x"));
    run_args(&analyze("x", "sx"));
    let mut rng = Lcg(5);
    let mut kills = 0;
    for args in [eval("y"), analyze("y", "sy")] {
        for _ in 0..12 {
            let mut child = Command::new(env!("CARGO_BIN_EXE_covf"))
                .args(&args)
                .current_dir(d)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let delay = Duration::from_millis(300 + rng.below(2500));
            let t0 = Instant::now();
            if !wait_or_kill(&mut child, || t0.elapsed() >= delay) {
                break;
            }
            kills += 1;
        }
        run_args(&args);
    }
    let rows = |run: &str| {
        let mut v: Vec<(usize, String, u64)> =
            covf::eval::results::read_rows(&d.join("checkpoints").join(run).join("eval"))
                .unwrap()
                .into_iter()
                .map(|r| (r.epoch, r.attack, r.accuracy.to_bits()))
                .collect();
        v.sort();
        v
    };
    assert_eq!(rows("x"), rows("y"), "eval after {kills} kills");
    let gap = |study: &str| {
        let df =
            covf::run::metrics::read_parquet(&d.join("analyses").join(study).join("out/gap-pgd10.parquet")).unwrap();
        let g: Vec<u64> = df
            .column("gap")
            .unwrap()
            .f64()
            .unwrap()
            .into_no_null_iter()
            .map(f64::to_bits)
            .collect();
        g
    };
    assert_eq!(gap("sx"), gap("sy"), "analyze after {kills} kills");
    eprintln!("eval + analyze kills survived: {kills}");
}

#[test]
fn hostile_inputs_exit_2_with_the_fault_named_and_leave_no_partial_output() {
    require_fmnist();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut tried = 0;
    let refuse = |args: &[&str], needle: &str| {
        let o = covf_code(args, d, 2);
        assert!(
            text(&o).contains(needle),
            "{args:?} should mention {needle:?}: {}",
            text(&o)
        );
        assert!(!text(&o).contains("panicked"), "{args:?}: {}", text(&o));
    };

    // A finished run to tamper with.
    train(d, "good", &["--method", "fgsm"], &["--epochs", "1"]);
    let good = d.join("checkpoints/good");

    // Flags out of range or unknown.
    for (args, needle) in [
        (&["train", "--eps", "0"][..], "epsilon"),
        (&["train", "--eps", "nan"][..], "epsilon"),
        (&["train", "--method", "fgsm", "--dtype", "f8"][..], "dtype"),
        (&["train", "--method", "gradalign", "--dtype", "bf16"][..], "gradalign"),
        (&["train", "--method", "nope"][..], "nope"),
        (&["train", "--batch-size", "0"][..], "batch size"),
        (&["eval", "good", "--attacks", "pgd10,nope"][..], "nope"),
        (&["eval", "good", "--epochs", "7"][..], "7"),
        (&["analyze", "gap", "--ref", "fgsm", "--runs", "good"][..], "fgsm"),
    ] {
        refuse(args, needle);
        tried += 1;
    }

    // Names that try to leave checkpoints/ or analyses/.
    for (args, needle) in [
        (&["train", "--name", "../../escape"][..], "run name"),
        (&["train", "--name", ".."][..], "run name"),
        (&["train", "--name", "/tmp/abs"][..], "run name"),
        (&["eval", "../../etc"][..], "run name"),
        (&["analyze", "co", "--study", "..", "--runs", "good"][..], "study"),
        (&["figures", "--study", ".."][..], "study"),
    ] {
        refuse(args, needle);
        tried += 1;
    }
    assert!(!d.join("escape").exists() && !d.parent().unwrap().join("escape").exists());
    std::fs::create_dir_all(d.join("analyses")).unwrap();
    std::fs::write(
        d.join("analyses/evil.toml"),
        "[study]\nname = \"../../evil\"\n[runs.f]\nmethod = \"fgsm\"\n",
    )
    .unwrap();
    refuse(&["study", "analyses/evil.toml"], "study.name");
    tried += 1;
    assert!(!d.join("evil").exists());

    // Corrupt, truncated and foreign checkpoints.
    let ck = good.join("epoch-001.safetensors");
    let bytes = std::fs::read(&ck).unwrap();
    let copy_run = |name: &str| {
        let to = d.join("checkpoints").join(name);
        std::fs::create_dir_all(&to).unwrap();
        for f in ["run.json", "epoch-001.safetensors", "train-state.safetensors"] {
            std::fs::copy(good.join(f), to.join(f)).unwrap();
        }
        to
    };
    let t = copy_run("truncated");
    std::fs::write(t.join("epoch-001.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    refuse(&["eval", "truncated", "--attacks", "clean"], "epoch-001.safetensors");
    // A PyTorch pickle (zip archive) where a checkpoint belongs: refused, never unpickled.
    let p = copy_run("pickle");
    std::fs::write(
        p.join("epoch-001.safetensors"),
        b"PK\x03\x04\x80\x02}q\x00(X\x06\x00\x00\x00weightq",
    )
    .unwrap();
    refuse(
        &["eval", "pickle", "--attacks", "clean"],
        "not a valid safetensors file",
    );
    // Another architecture: the run says preact18, the weights are preact-tiny's.
    let a = copy_run("other-arch");
    let spec = std::fs::read_to_string(a.join("run.json")).unwrap();
    std::fs::write(a.join("run.json"), spec.replace("\"preact-tiny\"", "\"preact18\"")).unwrap();
    refuse(&["eval", "other-arch", "--attacks", "clean"], "another architecture");
    // A resume state cut short: --resume names it instead of training on garbage.
    let s = copy_run("bad-state");
    let state = std::fs::read(s.join("train-state.safetensors")).unwrap();
    std::fs::write(s.join("train-state.safetensors"), &state[..state.len() - 7]).unwrap();
    let mut args = vec!["train", "--name", "bad-state", "--resume", "--method", "fgsm"];
    args.extend_from_slice(TINY);
    refuse(&args, "train-state.safetensors");
    tried += 4;
    for run in ["truncated", "pickle", "other-arch"] {
        assert!(
            !d.join("checkpoints").join(run).join("eval").exists(),
            "{run}: eval output left behind"
        );
    }

    // Truncated and mislabelled data files.
    let mnist = d.join("mnist");
    std::fs::create_dir_all(&mnist).unwrap();
    let idx = |dims: &[usize], data: &[u8]| covf::data::idx::encode_idx(dims, data);
    std::fs::write(mnist.join("train-images-idx3-ubyte"), idx(&[8, 28, 28], &[3; 8 * 784])).unwrap();
    std::fs::write(mnist.join("train-labels-idx1-ubyte"), idx(&[8], &[1; 8])).unwrap();
    std::fs::write(mnist.join("t10k-images-idx3-ubyte"), idx(&[4, 28, 28], &[3; 4 * 784])).unwrap();
    let labels = idx(&[4], &[1; 4]);
    std::fs::write(mnist.join("t10k-labels-idx1-ubyte"), &labels[..labels.len() - 1]).unwrap();
    let data_dir = mnist.to_str().unwrap();
    let train_mnist = [
        "train",
        "--dataset",
        "mnist",
        "--data-dir",
        data_dir,
        "--name",
        "m",
        "--quiet",
    ];
    refuse(&train_mnist, "t10k-labels-idx1-ubyte");
    std::fs::write(mnist.join("t10k-labels-idx1-ubyte"), idx(&[4], &[1, 2, 77, 3])).unwrap();
    refuse(&train_mnist, "77");
    tried += 2;
    assert!(!d.join("checkpoints/m").exists(), "bad data left a run directory");

    // A diverging run stops at the batch where the loss became non-finite, keeps nothing of that epoch.
    let mut args = vec!["train", "--name", "nan", "--method", "fgsm"];
    args.extend_from_slice(&["--lr-max", "1e12", "--lr-schedule", "constant"]);
    args.extend_from_slice(TINY);
    refuse(&args, "batch");
    tried += 1;
    assert!(!d.join("checkpoints/nan/epoch-001.safetensors").exists());

    // A full disk (here: a file-size limit below one checkpoint's size) while saving.
    let mut args = vec![
        "train".to_string(),
        "--name".into(),
        "full-disk".into(),
        "--method".into(),
        "fgsm".into(),
    ];
    args.extend(TINY.iter().map(|s| s.to_string()));
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -f 64 && exec \"$0\" {}", args.join(" ")))
        .arg(env!("CARGO_BIN_EXE_covf"))
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("epoch-001.safetensors") && text(&o).contains("free space"),
        "{}",
        text(&o)
    );
    let fd = d.join("checkpoints/full-disk");
    assert!(!fd.join("epoch-001.safetensors").exists() && temp_files(&fd).is_empty());
    tried += 1;
    eprintln!("bad-input cases tried: {tried}");
}
