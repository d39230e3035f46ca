//! Figures and their presentation: each figure is the median of its rounds with the
//! range (min to max); targets are checked against the median. Printed as a table and
//! written as JSON.

use std::fmt::Write as _;

use serde::Serialize;

/// A figure's target, checked against its median.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Goal {
    /// The median must be at least this.
    AtLeast(f64),
    /// The median must be at most this.
    AtMost(f64),
}

impl Goal {
    fn met(self, value: f64) -> bool {
        match self {
            Goal::AtLeast(bound) => value >= bound,
            Goal::AtMost(bound) => value <= bound,
        }
    }

    fn describe(self) -> String {
        match self {
            Goal::AtLeast(bound) => format!(">= {}", trim(bound)),
            Goal::AtMost(bound) => format!("<= {}", trim(bound)),
        }
    }
}

/// One figure of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Which scenario (a-e).
    pub scenario: &'static str,
    /// What was measured.
    pub metric: String,
    /// Its unit.
    pub unit: &'static str,
    /// Median over rounds.
    pub median: f64,
    /// Smallest round.
    pub min: f64,
    /// Largest round.
    pub max: f64,
    /// Every round's value, in order.
    pub rounds: Vec<f64>,
    /// The target, if the figure has one.
    pub goal: Option<Goal>,
    /// Whether the median meets it.
    pub met: Option<bool>,
}

/// Every figure of a run, plus notes.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The figures, in the order measured.
    pub rows: Vec<Row>,
    /// Remarks per scenario (set-up facts a reader must know).
    pub notes: Vec<(String, String)>,
}

impl Report {
    /// Adds a figure from its per-round values.
    pub fn add(
        &mut self,
        scenario: &'static str,
        metric: impl Into<String>,
        unit: &'static str,
        rounds: Vec<f64>,
        goal: Option<Goal>,
    ) {
        let mut sorted: Vec<f64> = rounds.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let median = median_of_sorted(&sorted);
        let min = sorted.first().copied().unwrap_or(f64::NAN);
        let max = sorted.last().copied().unwrap_or(f64::NAN);
        self.rows.push(Row {
            scenario,
            metric: metric.into(),
            unit,
            median,
            min,
            max,
            rounds,
            goal,
            met: goal.map(|g| g.met(median)),
        });
    }

    /// Adds a remark to a scenario.
    pub fn note(&mut self, scenario: &str, text: impl Into<String>) {
        self.notes.push((scenario.to_owned(), text.into()));
    }

    /// The scenarios that have at least one figure.
    pub fn scenarios(&self) -> Vec<&'static str> {
        let mut seen = Vec::new();
        for row in &self.rows {
            if !seen.contains(&row.scenario) {
                seen.push(row.scenario);
            }
        }
        seen
    }

    /// The table printed on standard output.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let header = [
            "scen",
            "metric",
            "median",
            "range (min..max)",
            "unit",
            "target",
            "met",
        ];
        let mut lines: Vec<[String; 7]> = Vec::new();
        for row in &self.rows {
            lines.push([
                row.scenario.to_owned(),
                row.metric.clone(),
                fmt(row.median),
                format!("{}..{}", fmt(row.min), fmt(row.max)),
                row.unit.to_owned(),
                row.goal.map(Goal::describe).unwrap_or_default(),
                match row.met {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => String::new(),
                },
            ]);
        }
        let mut widths = header.map(str::len);
        for line in &lines {
            for (w, cell) in widths.iter_mut().zip(line) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut push = |cells: &[String]| {
            let mut text = String::from("|");
            for (cell, w) in cells.iter().zip(widths) {
                let _ = write!(text, " {cell:<w$} |");
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        push(&header.map(str::to_owned));
        push(&widths.map(|w| "-".repeat(w)));
        for line in &lines {
            push(line);
        }
        for (scenario, note) in &self.notes {
            let _ = writeln!(out, "note ({scenario}): {note}");
        }
        out
    }
}

fn median_of_sorted(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The `p`-th percentile (0-100) of some values, nearest rank; NaN when empty.
pub fn percentile(values: &mut [u32], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_unstable();
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    f64::from(values[rank.clamp(1, values.len()) - 1])
}

fn fmt(value: f64) -> String {
    if !value.is_finite() {
        "-".into()
    } else if value.abs() >= 1000.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

fn trim(value: f64) -> String {
    let text = format!("{value}");
    text.trim_end_matches(".0").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_ranges_and_goals() {
        let mut report = Report::default();
        report.add(
            "a",
            "ratio",
            "x",
            vec![0.9, 1.1, 1.0],
            Some(Goal::AtLeast(0.95)),
        );
        report.add("a", "ms", "ms", vec![3.0, 1.0], Some(Goal::AtMost(1.5)));
        assert_eq!(report.rows[0].median, 1.0);
        assert_eq!((report.rows[0].min, report.rows[0].max), (0.9, 1.1));
        assert_eq!(report.rows[0].met, Some(true));
        assert_eq!(report.rows[1].median, 2.0);
        assert_eq!(report.rows[1].met, Some(false));
        let table = report.table();
        assert!(table.contains("| a    | ratio"), "{table}");
        assert!(table.contains(">= 0.95"), "{table}");
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut values: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(percentile(&mut values, 50.0), 50.0);
        assert_eq!(percentile(&mut values, 99.0), 99.0);
        assert!(percentile(&mut [], 50.0).is_nan());
    }
}
