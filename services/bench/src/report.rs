//! Figures, the table printed at the end, and the JSON file.

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub id: String,
    pub what: String,
    pub outpost: f64,
    pub baseline: Option<f64>,
    pub baseline_what: String,
    /// outpost / baseline.
    pub ratio: Option<f64>,
    /// The ratio the target asks for, when there is one.
    pub target_ratio: Option<f64>,
    /// For lower-is-better figures the ratio is outpost / baseline and the
    /// target is a ceiling.
    pub lower_is_better: bool,
}

impl Figure {
    pub fn higher_is_better(
        id: &str,
        what: &str,
        outpost: f64,
        baseline: f64,
        baseline_what: &str,
        target: f64,
    ) -> Figure {
        Figure {
            id: id.into(),
            what: what.into(),
            outpost,
            baseline: Some(baseline),
            baseline_what: baseline_what.into(),
            ratio: Some(outpost / baseline),
            target_ratio: Some(target),
            lower_is_better: false,
        }
    }

    pub fn lower_is_better(
        id: &str,
        what: &str,
        outpost: f64,
        baseline: f64,
        baseline_what: &str,
        ceiling: f64,
    ) -> Figure {
        Figure {
            lower_is_better: true,
            ..Figure::higher_is_better(id, what, outpost, baseline, baseline_what, ceiling)
        }
    }

    /// The same comparison, shown without a target.
    pub fn without_target(self) -> Figure {
        Figure {
            target_ratio: None,
            ..self
        }
    }

    pub fn info(id: &str, what: &str, outpost: f64) -> Figure {
        Figure {
            id: id.into(),
            what: what.into(),
            outpost,
            baseline: None,
            baseline_what: String::new(),
            ratio: None,
            target_ratio: None,
            lower_is_better: false,
        }
    }
}

fn fmt(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

pub fn print_table(figures: &[Figure]) {
    println!(
        "{:<12} {:<60} {:>10} {:>10} {:>6} {:>6}  baseline",
        "id", "figure", "outpost", "baseline", "ratio", "target"
    );
    for f in figures {
        let verdict = match (f.ratio, f.target_ratio) {
            (Some(r), Some(t)) if f.lower_is_better && r <= t => "ok",
            (Some(r), Some(t)) if !f.lower_is_better && r >= t => "ok",
            (Some(_), Some(_)) => "BELOW",
            _ => "",
        };
        println!(
            "{:<12} {:<60} {:>10} {:>10} {:>6} {:>6}  {} {}",
            f.id,
            f.what,
            fmt(f.outpost),
            f.baseline.map(fmt).unwrap_or_else(|| "-".into()),
            f.ratio
                .map(|r| format!("{r:.2}"))
                .unwrap_or_else(|| "-".into()),
            f.target_ratio
                .map(|r| format!("{}{r:.2}", if f.lower_is_better { "≤" } else { "≥" }))
                .unwrap_or_else(|| "-".into()),
            f.baseline_what,
            verdict,
        );
    }
}
