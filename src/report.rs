//! Rendering reports: the human table for stdout, and JSON.

use std::fmt::Write as _;

use crate::check::Report;

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

/// The batch as a table: one line per job (outcome, name, seconds, what went wrong),
/// then the totals.
pub fn render_batch_text(b: &crate::batch::BatchReport) -> String {
    use crate::batch::Outcome;
    let mut s = String::new();
    for j in &b.jobs {
        let detail = match (&j.report, &j.error) {
            (Some(r), _) if j.outcome == Outcome::Fail => {
                failure_summary(r).trim_end().replace('\n', "; ")
            }
            (Some(r), _) => format!("difference {:e}", r.difference),
            (None, Some(e)) => e.clone(),
            _ => String::new(),
        };
        let tag = match j.outcome {
            Outcome::Pass => "pass",
            Outcome::Fail => "FAIL",
            Outcome::Error => "ERROR",
        };
        let _ = writeln!(s, "{tag:<5} {:<24} {:>8.3} s  {detail}", j.name, j.seconds);
    }
    let _ = writeln!(
        s,
        "batch: {} pass, {} fail, {} error ({:.3} s)",
        b.passed, b.failed, b.errors, b.seconds
    );
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The batch as JUnit XML: one testcase per job, failures carrying the per-tensor summary.
pub fn render_junit(b: &crate::batch::BatchReport) -> String {
    use crate::batch::Outcome;
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let head = format!(
        "name=\"gradcheck\" tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{:.6}\"",
        b.jobs.len(),
        b.failed,
        b.errors,
        b.seconds
    );
    let _ = writeln!(s, "<testsuites {head}>");
    let _ = writeln!(s, "  <testsuite {head}>");
    for j in &b.jobs {
        let _ = write!(
            s,
            "    <testcase classname=\"gradcheck\" name=\"{}\" time=\"{:.6}\"",
            xml_escape(&j.name),
            j.seconds
        );
        match (j.outcome, &j.report, &j.error) {
            (Outcome::Fail, Some(r), _) => {
                let _ = writeln!(
                    s,
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                    xml_escape(&format!(
                        "gradient check failed: difference {:e}",
                        r.difference_counted
                    )),
                    xml_escape(&failure_summary(r))
                );
            }
            (Outcome::Error, _, Some(e)) => {
                let _ = writeln!(
                    s,
                    ">\n      <error message=\"{}\">{}</error>\n    </testcase>",
                    xml_escape(e),
                    xml_escape(e)
                );
            }
            _ => {
                let _ = writeln!(s, "/>");
            }
        }
    }
    s.push_str("  </testsuite>\n</testsuites>\n");
    s
}
