//! Notebook 1 — Figure 1: what catastrophic overfitting looks like, in the model and in its perturbation.
//!
//! Run: `cargo run --release --example 01_perturbations_and_collapse [-- analyses/<study>]`
//!
//! (b) is the classic symptom: FGSM training's test accuracy under PGD-10 falls to almost nothing between
//! two consecutive epochs (the dotted "CO" line), while PGD-10 training keeps improving. (a) is the other
//! side the paper points at: the FGSM perturbation of the same test images, drawn with a diverging map
//! (blue −ε, white 0, vermillion +ε). Look at the structure: a working generator follows the image (the
//! input gradient points at the features the model uses, so edges and the silhouette stand out); the
//! paper's claim is that at the CO epoch the perturbation stops doing so and becomes noise-like, no
//! stronger than random signs (notebook 2 measures that). Under each δ the caption gives the class the
//! model predicts for x + δ: before CO it is often wrong, after CO mostly right — the model has become
//! robust to its own, deteriorated perturbation only.

#[path = "common.rs"]
mod common;

use covf::figures::{self, data::StudyTables, fig1, Figure};

fn main() {
    let (dir, out) = common::study_dirs();
    let t = StudyTables::new(&out);
    let grid = fig1::Fig1a::select(&t).unwrap_or_else(|e| common::missing(&out, e));
    println!("Figure 1a: run {}, ε = {}", grid.run, figures::data::trim(grid.eps));
    for row in &grid.rows {
        let preds: Vec<String> = row
            .deltas
            .iter()
            .map(|(e, _, p)| format!("epoch {e}: {}", grid.class(*p)))
            .collect();
        println!("  {} → {}", grid.class(row.label), preds.join(", "));
    }
    if let Some(e) = grid.co_epoch {
        println!("CO epoch of this run (from the co table): {e}");
    }
    let curve = fig1::Fig1b::select(&t).unwrap_or_else(|e| common::missing(&out, e));
    for s in &curve.series {
        let v: Vec<String> = s.points.iter().map(|(x, y)| format!("{x}: {y:.1}%")).collect();
        println!("PGD-10 accuracy, {}: {}", s.label, v.join("  "));
    }
    for id in ["1a", "1b"] {
        match figures::render(id, &out, &dir.join("figures")) {
            Ok(files) => files.iter().for_each(|f| println!("wrote {}", f.display())),
            Err(e) => common::missing(&out, e),
        }
    }
}
