//! Notebook 3 — Figure 3: the step sizes APART learns.
//!
//! Run: `cargo run --release --example 03_step_sizes [-- analyses/<study>]`
//!
//! APART does not fix FGSM's step α = ε: it learns one step size per perturbed layer (the input, α1, and
//! each residual block's input) by gradient ascent on the training loss, pulled back by an L2 penalty.
//! Each line is one layer's α at the end of an epoch: a rising α means the loss still grows along the
//! perturbation (the generator asks for larger steps as the model hardens); the L2 pull keeps steps that
//! do not help from drifting. The paper's Figure 3 shows these traces over 30 CIFAR-10 epochs; the CPU
//! default has only a few epochs, so read the direction of change rather than the level.

#[path = "common.rs"]
mod common;

use covf::figures::{self, data::StudyTables, fig3, Figure};

fn main() {
    let (dir, out) = common::study_dirs();
    let t = StudyTables::new(&out);
    let c = fig3::Fig3::select(&t).unwrap_or_else(|e| common::missing(&out, e));
    for s in &c.series {
        let first = s.points.first().map_or(f64::NAN, |p| p.1);
        let last = s.points.last().map_or(f64::NAN, |p| p.1);
        println!(
            "{:<20} α from {first:.5} to {last:.5} over {} epochs",
            s.label,
            s.points.len()
        );
    }
    match figures::render("3", &out, &dir.join("figures")) {
        Ok(files) => files.iter().for_each(|f| println!("wrote {}", f.display())),
        Err(e) => common::missing(&out, e),
    }
}
