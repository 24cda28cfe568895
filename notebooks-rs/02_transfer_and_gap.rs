//! Notebook 2 — Figure 2: measuring perturbation deterioration.
//!
//! Run: `cargo run --release --example 02_transfer_and_gap [-- analyses/<study>]`
//!
//! Two measurements, both per epoch of each run.
//!
//! (a) Transfer strength S_i(A): perturbations that method A's own generator makes on its epoch-i model,
//! evaluated on a separate reference model (the last epoch of the PGD-10 run). Lower accuracy = stronger
//! perturbation. The dashed grey line is the same reference under random ±ε signs: a generator whose line
//! reaches it produces nothing better than noise. The paper's claim is that FGSM's line jumps towards the
//! random line at the CO epoch while APART's stays well below it.
//!
//! (b) The gap G = L(θ_A; x + δ_PGD-10) − L(θ_A; x + δ_A), in nats, on A's own model: how much loss the
//! method's own perturbation leaves on the table compared with a strong attack. It is small while the
//! generator works and explodes at CO. (PAPER.md writes the two terms the other way round; covf keeps the
//! sign that makes "larger = weaker", as the paper's text describes — see docs/analysis.md.)

#[path = "common.rs"]
mod common;

use covf::figures::{self, data::StudyTables, fig2, Figure};

fn main() {
    let (dir, out) = common::study_dirs();
    let t = StudyTables::new(&out);
    let transfer = fig2::Fig2a::select(&t).unwrap_or_else(|e| common::missing(&out, e));
    println!("{}", transfer.title);
    for s in &transfer.series {
        let v: Vec<String> = s.points.iter().map(|(x, y)| format!("{x}: {y:.1}%")).collect();
        println!("  {:<28} {}", s.label, v.join("  "));
    }
    let gap = t.gap(10, None).unwrap_or_else(|e| common::missing(&out, e));
    println!("{}", gap.title);
    for s in &gap.series {
        let v: Vec<String> = s.points.iter().map(|(x, y)| format!("{x}: {y:.2}")).collect();
        println!("  {:<28} {}", s.label, v.join("  "));
    }
    for id in ["2a", "2b"] {
        match figures::render(id, &out, &dir.join("figures")) {
            Ok(files) => files.iter().for_each(|f| println!("wrote {}", f.display())),
            Err(e) => common::missing(&out, e),
        }
    }
}
