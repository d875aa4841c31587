//! The rows, the one table, and target/bench/bench.json.

use serde::Serialize;
use serde_json::{Map, Value};
use std::path::PathBuf;

#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Measured.
    Ok,
    /// Not measured: an error, a panic, or its deadline came first (`result` says what it
    /// reached). Makes the run exit non-zero.
    Failed,
    /// Left out of this run (RPEC_BENCH_ROWS).
    Skipped,
}

#[derive(Serialize, Clone, Debug)]
pub struct Row {
    /// The row's key in the JSON.
    #[serde(skip)]
    pub key: &'static str,
    pub row: &'static str,
    pub status: Status,
    /// The figure, as the table shows it.
    pub result: String,
    /// The goal, when there is one, and whether this run met it.
    pub goal: Option<String>,
    pub goal_met: Option<bool>,
    pub notes: Vec<String>,
    /// The figures as numbers (and what the row reached when it did not finish).
    #[serde(flatten)]
    pub values: Map<String, Value>,
}

impl Row {
    pub fn new(key: &'static str, row: &'static str) -> Row {
        Row {
            key,
            row,
            status: Status::Ok,
            result: String::new(),
            goal: None,
            goal_met: None,
            notes: Vec::new(),
            values: Map::new(),
        }
    }

    pub fn failed(key: &'static str, row: &'static str, why: String) -> Row {
        let mut r = Row::new(key, row);
        r.status = Status::Failed;
        r.result = why;
        r
    }

    pub fn skipped(key: &'static str, row: &'static str) -> Row {
        let mut r = Row::new(key, row);
        r.status = Status::Skipped;
        r.result = "left out of this run (RPEC_BENCH_ROWS)".into();
        r
    }

    /// Records a figure for the JSON (rounded to 4 decimals when a float).
    pub fn value(&mut self, name: &str, v: impl Into<Value>) {
        let v = match v.into() {
            Value::Number(n) if n.is_f64() => n
                .as_f64()
                .and_then(|f| serde_json::Number::from_f64((f * 10_000.0).round() / 10_000.0))
                .map(Value::Number)
                .unwrap_or(Value::Null),
            other => other,
        };
        self.values.insert(name.to_owned(), v);
    }

    pub fn goal(&mut self, text: &str, met: bool) {
        self.goal = Some(text.to_owned());
        self.goal_met = Some(met);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }
}

/// 12345.6 as "12,346"; small figures keep what matters.
pub fn thousands(n: f64) -> String {
    let rounded = n.round() as i64;
    let digits = rounded.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if rounded < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A rate or a count as the table shows it: 3 significant digits below 100.
pub fn figure(n: f64) -> String {
    if n.abs() >= 100.0 {
        thousands(n)
    } else if n.abs() >= 10.0 {
        format!("{n:.1}")
    } else {
        format!("{n:.2}")
    }
}

pub fn table(title: &str, rows: &[Row]) -> String {
    let wrap = |s: &str, width: usize| -> Vec<String> {
        let mut lines = vec![String::new()];
        for word in s.split(' ') {
            let last = lines.last_mut().unwrap();
            if !last.is_empty() && last.chars().count() + 1 + word.chars().count() > width {
                lines.push(word.to_owned());
            } else {
                if !last.is_empty() {
                    last.push(' ');
                }
                last.push_str(word);
            }
        }
        lines
    };
    const ROW: usize = 20;
    const RESULT: usize = 64;
    const GOAL: usize = 22;
    let mut out = format!("{title}\n\n");
    out.push_str(&format!(
        "{:<ROW$} {:<RESULT$} {:<GOAL$} {}\n",
        "row", "result", "goal", "status"
    ));
    out.push_str(&format!(
        "{} {} {} {}\n",
        "-".repeat(ROW),
        "-".repeat(RESULT),
        "-".repeat(GOAL),
        "-".repeat(7)
    ));
    for r in rows {
        let goal = match (&r.goal, r.goal_met) {
            (Some(g), Some(true)) => format!("{g}: met"),
            (Some(g), Some(false)) => format!("{g}: NOT met"),
            (Some(g), None) => g.clone(),
            (None, _) => "-".into(),
        };
        let status = match r.status {
            Status::Ok => "ok",
            Status::Failed => "FAILED",
            Status::Skipped => "skipped",
        };
        let result = wrap(&r.result, RESULT);
        let goal = wrap(&goal, GOAL);
        for i in 0..result.len().max(goal.len()) {
            let first = i == 0;
            out.push_str(
                format!(
                    "{:<ROW$} {:<RESULT$} {:<GOAL$} {}",
                    if first { r.row } else { "" },
                    result.get(i).map(String::as_str).unwrap_or(""),
                    goal.get(i).map(String::as_str).unwrap_or(""),
                    if first { status } else { "" }
                )
                .trim_end(),
            );
            out.push('\n');
        }
    }
    let noted: Vec<&Row> = rows.iter().filter(|r| !r.notes.is_empty()).collect();
    if !noted.is_empty() {
        out.push_str("\nNotes:\n");
        for r in noted {
            for n in &r.notes {
                out.push_str(&format!("  {}: {n}\n", r.row));
            }
        }
    }
    out
}

pub fn output_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::helpers::manifest_dir().join("target"))
        .join("bench")
}

/// The JSON: `meta`, then one key per row, plus `fan_out_ratio` at the top for a quick look.
pub fn json(meta: Value, rows: &[Row]) -> Value {
    let mut top = Map::new();
    top.insert("meta".into(), meta);
    let ratio = rows
        .iter()
        .find(|r| r.key == "fan_out")
        .and_then(|r| r.values.get("fan_out_ratio").cloned())
        .unwrap_or(Value::Null);
    top.insert("fan_out_ratio".into(), ratio);
    for r in rows {
        top.insert(r.key.into(), serde_json::to_value(r).unwrap_or(Value::Null));
    }
    Value::Object(top)
}

#[test]
fn figures_read_well() {
    assert_eq!(thousands(1234567.4), "1,234,567");
    assert_eq!(thousands(999.0), "999");
    assert_eq!(figure(0.4567), "0.46");
    assert_eq!(figure(42.42), "42.4");
    assert_eq!(figure(5480.2), "5,480");
}
