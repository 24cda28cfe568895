//! Figure 2: (a) transfer strength per epoch per method with the random baseline, as the paper draws it
//! (plain FGSM on each run's checkpoints), and `2a-own` with each method's own generator; (b) the strength
//! gap G_PGD-10,i(A) per epoch; and both at step resolution from the in-training monitor (`2a-steps`,
//! `2b-steps`: x = training step, epoch boundaries and each run's CO step marked).

use super::data::{
    f64s, group, labelled, monitor_rows, step_chart, step_series, strs, u64s, LineChart, Series, StudyTables,
};
use super::Figure;
use crate::analysis::transfer::Source;
use crate::error::Result;

/// Transfer strength of the rows from one generator (`fgsm`: Figure 2a; `own`: the methods' own
/// generators, figure `2a-own`). Tables from before the `generator` column hold own-generator rows.
pub fn transfer_chart(t: &StudyTables, source: Source) -> Result<LineChart> {
    let (df, p) = if t.has_column("transfer", "generator")? {
        t.read_where("transfer", "generator", source.name())?
    } else {
        let (df, p) = t.read("transfer")?;
        (if source == Source::Own { df } else { df.head(Some(0)) }, p)
    };
    let (runs, ms, ep, acc, random, reference) = (
        strs(&df, "run", &p)?,
        strs(&df, "method", &p)?,
        u64s(&df, "epoch", &p)?,
        f64s(&df, "acc_ref", &p)?,
        f64s(&df, "random_acc", &p)?,
        strs(&df, "reference", &p)?,
    );
    let keys: Vec<(String, String)> = runs.iter().cloned().zip(ms.iter().cloned()).collect();
    let xs: Vec<f64> = ep.iter().map(|&e| e as f64).collect();
    let mut series = labelled(group(&keys, &xs, &acc), 100.0);
    // The baseline depends only on the reference and ε: one dashed line per distinct value.
    let mut seen: Vec<u64> = Vec::new();
    let (lo, hi) = xs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
    for &r in &random {
        if !r.is_finite() || seen.contains(&r.to_bits()) {
            continue;
        }
        seen.push(r.to_bits());
        series.push(Series {
            label: "Random (±ε signs)".into(),
            style: 0,
            points: vec![(lo, 100.0 * r), (hi, 100.0 * r)],
            reference: true,
            point_labels: Vec::new(),
        });
    }
    let reference = reference.first().cloned().unwrap_or_default();
    let of = match source {
        Source::Fgsm => "FGSM on each run's checkpoints",
        Source::Own => "each method's own generator",
    };
    Ok(LineChart {
        title: format!("Transfer strength on {} ({of})", reference.replace('@', " epoch ")),
        x_desc: "Epoch of the generating checkpoint".into(),
        y_desc: "Reference accuracy (%, lower = stronger)".into(),
        series,
        vlines: t.co_lines(&runs)?,
        integer_x: true,
        scatter: false,
    })
}

/// Figure 2a as the paper draws it: plain FGSM generated on each run's checkpoints, transferred to the
/// reference, per epoch, with the random-sign baseline.
pub struct Fig2a;

impl Figure for Fig2a {
    type Data = LineChart;
    const ID: &'static str = "2a";
    const NEEDS: &'static [&'static str] = &["transfer"];

    fn select(t: &StudyTables) -> Result<LineChart> {
        transfer_chart(t, Source::Fgsm)
    }
}

/// Figure 2a with each method's own generator (the perturbation it trains on).
pub struct Fig2aOwn;

impl Figure for Fig2aOwn {
    type Data = LineChart;
    const ID: &'static str = "2a-own";
    const NEEDS: &'static [&'static str] = &["transfer"];

    fn select(t: &StudyTables) -> Result<LineChart> {
        transfer_chart(t, Source::Own)
    }
}

/// Figure 2b: the gap to PGD-10 per epoch, every run.
pub struct Fig2b;

impl Figure for Fig2b {
    type Data = LineChart;
    const ID: &'static str = "2b";
    const NEEDS: &'static [&'static str] = &["gap-pgd10"];

    fn select(t: &StudyTables) -> Result<LineChart> {
        t.gap(10, None)
    }
}

/// Figure 2a at step resolution: the reference's accuracy on the probe + f_FGSM of each run as it trains
/// (the monitor's `transfer` signal), with each run's random-sign baseline.
pub struct Fig2aSteps;

impl Figure for Fig2aSteps {
    type Data = LineChart;
    const ID: &'static str = "2a-steps";
    const NEEDS: &'static [&'static str] = &["monitor"];

    fn select(t: &StudyTables) -> Result<LineChart> {
        let rows = monitor_rows(t)?;
        let mut c = step_chart(
            &rows,
            "transfer_acc",
            100.0,
            "Transfer strength of FGSM during training (monitor)",
            "Reference accuracy (%, lower = stronger)",
        );
        let (random, _) = step_series(&rows, "transfer_random", 100.0);
        for mut r in random {
            r.label = format!("Random (±ε signs), {}", r.label);
            r.reference = true;
            c.series.push(r);
        }
        Ok(c)
    }
}

/// Figure 2b at step resolution: the gap L(δ_PGD) − L(δ_own) on the monitor's probe.
pub struct Fig2bSteps;

impl Figure for Fig2bSteps {
    type Data = LineChart;
    const ID: &'static str = "2b-steps";
    const NEEDS: &'static [&'static str] = &["monitor"];

    fn select(t: &StudyTables) -> Result<LineChart> {
        Ok(step_chart(
            &monitor_rows(t)?,
            "gap",
            1.0,
            "Perturbation gap to PGD during training (monitor)",
            "L(δ_PGD) − L(δ_own) (nats)",
        ))
    }
}
