//! Notebook 5 — Figure 5: APART against PGD-10 over a run.
//!
//! Run: `cargo run --release --example 05_apart_vs_pgd [-- analyses/<study>]`
//!
//! Three panels for the two methods. (a) training accuracy on each method's own perturbations; (b) test
//! accuracy under PGD-20; (c) the gap between each method's own perturbation and PGD-20 on its own model.
//! The paper runs 200 epochs to show that APART, at a fraction of PGD-10's cost, also resists robust
//! overfitting: its training accuracy does not race away from its test robustness, and its gap to PGD-20
//! stays small, i.e. its cheap generator keeps up with a strong attack. At CPU scale the runs are short:
//! compare the levels and whether the gap stays flat.

#[path = "common.rs"]
mod common;

use covf::figures;

fn main() {
    let (dir, out) = common::study_dirs();
    let t = figures::data::StudyTables::new(&out);
    for metric in ["train_acc_adv", "test_acc_pgd20"] {
        let series = t
            .curve(metric, Some(&figures::fig5::METHODS))
            .unwrap_or_else(|e| common::missing(&out, e));
        for s in &series {
            let v: Vec<String> = s.points.iter().map(|(x, y)| format!("{x}: {y:.1}%")).collect();
            println!("{metric:<15} {:<10} {}", s.label, v.join("  "));
        }
    }
    match figures::render("5", &out, &dir.join("figures")) {
        Ok(files) => files.iter().for_each(|f| println!("wrote {}", f.display())),
        Err(e) => common::missing(&out, e),
    }
}
