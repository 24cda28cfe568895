//! Notebook 4 — Figure 4: clean accuracy against robust accuracy across training radii.
//!
//! Run: `cargo run --release --example 04_tradeoff [-- analyses/<study>]`
//!
//! Each point is one model, trained by one method at one ε_train (the label beside it) and evaluated on the
//! same test images under PGD-20 at one evaluation ε. Moving along a method's line trades clean accuracy
//! (small ε_train) for robustness (large ε_train). A method is better when its line sits up and to the
//! right. A point that falls to the bottom is a catastrophically overfitted model: high clean accuracy,
//! no robustness — which is what FGSM does once ε_train is large enough.

#[path = "common.rs"]
mod common;

use covf::figures::{self, data::StudyTables, fig4, Figure};

fn main() {
    let (dir, out) = common::study_dirs();
    let t = StudyTables::new(&out);
    let c = fig4::Fig4::select(&t).unwrap_or_else(|e| common::missing(&out, e));
    println!("{}", c.title);
    for s in &c.series {
        for ((clean, robust), label) in s.points.iter().zip(&s.point_labels) {
            println!("  {:<14} {label:<8} clean {clean:5.1}%  robust {robust:5.1}%", s.label);
        }
    }
    match figures::render("4", &out, &dir.join("figures")) {
        Ok(files) => files.iter().for_each(|f| println!("wrote {}", f.display())),
        Err(e) => common::missing(&out, e),
    }
}
