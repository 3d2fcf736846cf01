//! Rendering reports: the human table for stdout, and JSON.
//!
//! May use: `verdict` and `diagnose` (what a report holds). Batch tables and JUnit live in `batch`.

use std::fmt::Write as _;

use crate::verdict::Report;

/// The notebook's verdict sentences.
fn verdict(passed: bool) -> &'static str {
    if passed {
        "PASS: your backward propagation works perfectly fine!"
    } else {
        "FAIL: there is a mistake in the backward propagation!"
    }
}

/// The human-readable table: overall difference and verdict, then one row per tensor.
pub fn render_text(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "gradcheck: {} parameters, m = {}, J(θ) = {:.15}",
        r.n_params, r.m, r.cost
    );
    let _ = writeln!(
        s,
        "backend {} ({}), ε = {:e}, threshold {:e}, {:.3} s",
        r.backend, r.precision, r.epsilon, r.threshold, r.timings.total_s
    );
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    if r.kinks > 0 {
        let _ = writeln!(
            s,
            "note: {} element(s) whose ±ε step crosses a ReLU kink {} (marked *)",
            r.kinks,
            if r.kinks_excluded {
                "are left out of the verdict"
            } else {
                "are counted"
            }
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "difference = {:e}", r.difference);
    if r.difference_counted != r.difference {
        let _ = writeln!(s, "difference without kinks = {:e}", r.difference_counted);
    }
    let _ = writeln!(s, "{}", verdict(r.passed));
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<8} {:>9} {:>12} {:>11} {:>6}  {:<5} worst element (analytic vs numeric)",
        "tensor", "shape", "difference", "rms error", "kinks", "ok"
    );
    for t in &r.tensors {
        let worst = t
            .worst
            .first()
            .map(|w| {
                format!(
                    "{}{} {:.6e} vs {:.6e}",
                    w.element,
                    if w.kink { "*" } else { "" },
                    w.analytic,
                    w.numeric
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "{:<8} {:>9} {:>12.3e} {:>11.3e} {:>6}  {:<5} {}",
            t.name,
            format!("{}×{}", t.shape[0], t.shape[1]),
            t.difference,
            t.rms_error,
            t.kinks,
            if t.passed { "pass" } else { "FAIL" },
            worst
        );
        if let Some(d) = &t.diagnosis {
            let _ = writeln!(s, "{:<8} ↳ {}", "", d.message);
        }
    }
    s
}

/// The report as pretty JSON.
pub fn render_json(r: &Report) -> String {
    serde_json::to_string_pretty(r).expect("reports serialise")
}

/// One line per failing tensor (its difference and diagnosis): the failure text of a
/// JUnit testcase and of batch summaries.
pub fn failure_summary(r: &Report) -> String {
    let mut s = format!(
        "difference {:e} (threshold {:e})\n",
        r.difference_counted, r.threshold
    );
    for t in r.tensors.iter().filter(|t| !t.passed) {
        let _ = write!(s, "{} FAIL difference {:.3e}", t.name, t.difference);
        if let Some(d) = &t.diagnosis {
            let _ = write!(s, ": {}", d.message);
        }
        s.push('\n');
    }
    s
}
