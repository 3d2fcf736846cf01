//! Rendering reports: the human table for stdout, and JSON.
//!
//! May use: `verdict` and `diagnose` (what a report holds). Batch tables and JUnit live in `batch`.

use std::fmt::Write as _;

use crate::verdict::{Report, Status, Verdict};

/// A float as Python's repr prints it (the notebook's output): positional between 1e-4
/// and 1e16, else shortest round-trip digits with a two-digit signed exponent.
pub fn py_repr(x: f64) -> String {
    if x == 0.0 || !x.is_finite() || (1e-4..1e16).contains(&x.abs()) {
        return format!("{x:?}");
    }
    fix_exponent(&format!("{x:e}"))
}

/// Both numbers with as many digits as it takes to tell them apart (7 at least, 17 at
/// most): a failing element off by 1e-7 relative must not print the same digits twice.
pub fn distinct(a: f64, b: f64) -> (String, String) {
    for prec in 6..=16 {
        let (x, y) = (sci(a, prec), sci(b, prec));
        if x != y || prec == 16 || a == b {
            return (x, y);
        }
    }
    unreachable!("the loop returns at prec 16")
}

/// ": off by 1.1e-7 relative, 40 × its bound" for a failing element.
pub fn off_by(analytic: f64, numeric: f64, bound: f64) -> String {
    let d = (analytic - numeric).abs();
    if !d.is_finite() || d == 0.0 {
        return String::new();
    }
    let rel = d / analytic.abs().max(numeric.abs());
    let units = if bound > 0.0 && bound.is_finite() {
        format!(", {} × its bound", sci(d / bound, 1))
    } else {
        String::new()
    };
    format!(" (off by {} relative{units})", sci(rel, 1))
}

/// `prec` significant decimals in numpy's style: 2.53e+00, 1.19e-07.
pub fn sci(x: f64, prec: usize) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    fix_exponent(&format!("{x:.prec$e}"))
}

fn fix_exponent(s: &str) -> String {
    match s.split_once('e') {
        Some((m, e)) => {
            let (sign, digits) = match e.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', e),
            };
            format!("{m}e{sign}{digits:0>2}")
        }
        None => s.to_string(),
    }
}

/// The verdict in one sentence (the notebook's two, and the third).
pub fn verdict_sentence(r: &Report) -> String {
    match (r.verdict, r.builtin_gradients) {
        (Verdict::Pass, false) => "PASS: your backward propagation works perfectly fine!".into(),
        (Verdict::Pass, true) => "PASS: the built-in backprop agrees with the numeric gradient (no gradients of yours were checked: give --grads)".into(),
        (Verdict::Fail, false) => "FAIL: there is a mistake in the backward propagation!".into(),
        (Verdict::Fail, true) => "FAIL: the built-in backprop disagrees with the numeric gradient (a bug of gradcheck's: please report it)".into(),
        (Verdict::Inconclusive, _) => "INCONCLUSIVE: central differences at this ε can neither confirm nor refute these gradients".into(),
    }
}

/// The human-readable table: overall difference and verdict, then one row per tensor.
pub fn render_text(r: &Report) -> String {
    let mut s = String::new();
    header(r, &mut s);
    let _ = writeln!(s);
    verdict_lines(r, &mut s);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<8} {:>9} {:>10} {:>10} {:>8}  {:<12} worst element: analytic vs numeric ± bound",
        "tensor", "shape", "difference", "resolution", "err/bnd", "verdict"
    );
    for t in &r.tensors {
        tensor_lines(t, &mut s);
    }
    if !r.timings.kernels.is_empty() {
        let device: f64 = r.timings.kernels.iter().map(|k| k.seconds).sum();
        let _ = writeln!(
            s,
            "\nGPU kernels (device time, every evaluation of the check): {} in all",
            seconds(device)
        );
        for k in &r.timings.kernels {
            let _ = writeln!(
                s,
                "  {:<14} {:>6} dispatch{} {:>10} {:>5.1} %",
                k.kernel,
                k.dispatches,
                if k.dispatches == 1 { " " } else { "es" },
                seconds(k.seconds),
                100.0 * k.seconds / device.max(f64::MIN_POSITIVE)
            );
        }
    }
    s
}

/// The first lines: what was checked, how, and the notes.
fn header(r: &Report, s: &mut String) {
    let params = if r.n_params == 1 {
        "parameter"
    } else {
        "parameters"
    };
    let _ = writeln!(
        s,
        "gradcheck: {} {params}, m = {}, J(θ) = {:.15}",
        r.n_params, r.m, r.cost
    );
    let _ = writeln!(
        s,
        "backend {}{} ({}), ε = {}, {:.3} s",
        r.backend,
        r.adapter
            .as_ref()
            .map_or(String::new(), |a| format!(" ({a})")),
        r.precision,
        py_repr(r.epsilon),
        r.timings.total_s
    );
    if let Some(m) = &r.model_guessed {
        let _ = writeln!(
            s,
            "MODEL GUESSED from the weight shapes: {m} (give yours with --model)"
        );
    }
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    if r.kinks > 0 {
        let _ = writeln!(
            s,
            "note: {} element(s) whose ±ε step crosses a kink (a ReLU at 0, a max-pool winner; marked *) {}",
            r.kinks,
            if r.kinks_excluded {
                "are judged by the one-sided difference that does not cross"
            } else {
                "are judged by the central difference anyway (--kinks include)"
            }
        );
    }
}

/// The notebook's difference, the verdict and its reasons.
fn verdict_lines(r: &Report, s: &mut String) {
    let _ = writeln!(
        s,
        "difference = {}   (the notebook's rule, difference ≤ {}: {})",
        py_repr(r.difference),
        py_repr(r.threshold),
        if r.notebook_rule_passed {
            "pass"
        } else {
            "fail"
        }
    );
    let _ = writeln!(s, "{}", verdict_sentence(r));
    for why in &r.reasons {
        let _ = writeln!(s, "  because {why}");
    }
    if let Some(e) = r.suggested_epsilon {
        let _ = writeln!(s, "  remedy: --epsilon {}", py_repr(e));
    }
    if r.verdict == Verdict::Pass && !r.notebook_rule_passed {
        let _ = writeln!(
            s,
            "  (the difference is above the notebook's threshold, yet every element agrees with its numeric gradient within that element's error bound: the difference mixes rounding and truncation into one number)"
        );
    }
}

/// One tensor's row and what follows it (diagnosis, other worst elements, counts).
fn tensor_lines(t: &crate::verdict::TensorReport, s: &mut String) {
    let worst = t
        .worst
        .first()
        .map(|w| {
            let tag = match w.status {
                Status::Consistent | Status::Suspicious | Status::Wrong => String::new(),
                other => format!(
                    " ({})",
                    serde_json::to_value(other).map_or(String::new(), |v| v
                        .as_str()
                        .unwrap_or("")
                        .replace('_', " "))
                ),
            };
            let (a, n) = distinct(w.analytic, w.numeric);
            format!(
                "{}{} {a} vs {n} ± {}{tag}{}",
                w.element,
                if w.kink { "*" } else { "" },
                sci(w.bound, 1),
                if t.passed {
                    String::new()
                } else {
                    off_by(w.analytic, w.numeric, w.bound)
                },
            )
        })
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "{:<8} {:>9} {:>10} {:>10} {:>8}  {:<12} {}",
        t.name,
        t.shape
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join("×"),
        sci(t.difference, 2),
        sci(t.resolution, 1),
        if t.max_excess < 1e4 {
            format!("{:.2}", t.max_excess)
        } else {
            sci(t.max_excess, 1)
        },
        t.verdict.label(),
        worst
    );
    if let Some(d) = &t.diagnosis {
        let _ = writeln!(s, "{:<8} ↳ {}", "", d.message);
    }
    let tiny = t
        .worst
        .iter()
        .map(|w| (w.analytic - w.numeric).abs() / w.analytic.abs().max(w.numeric.abs()));
    if !t.passed && t.verdict == crate::verdict::Verdict::Fail && tiny.fold(0.0, f64::max) < 1e-6 {
        let _ = writeln!(
            s,
            "{:<8} ↳ a real but tiny error (under 1e-6 relative everywhere): far below what affects training — e.g. a stabilising 1e-8 inside a log makes the gradient exact for a slightly different cost",
            ""
        );
    }
    // A tensor that did not pass lists its other worst elements too (`--top K`).
    if !t.passed {
        for w in t.worst.iter().skip(1) {
            let (a, n) = distinct(w.analytic, w.numeric);
            let _ = writeln!(
                s,
                "{:<8} ↳ also {}{} {a} vs {n} ± {}{}",
                "",
                w.element,
                if w.kink { "*" } else { "" },
                sci(w.bound, 1),
                off_by(w.analytic, w.numeric, w.bound)
            );
        }
    }
    if t.unresolved > 0 {
        let _ = writeln!(
            s,
            "{:<8} ↳ {} of {} elements could not be judged at this ε",
            "",
            t.unresolved,
            t.shape.iter().product::<usize>()
        );
    }
    if t.coarse > 0 && t.passed {
        let _ = writeln!(
            s,
            "{:<8} ↳ {} of {} elements checked only as part of the tensor (each one's own bound exceeds {} % of its value)",
            "",
            t.coarse,
            t.shape.iter().product::<usize>(),
            100.0 * gradcheck_resolution()
        );
    }
}

/// [`crate::verdict::RESOLUTION`], as the text prints it.
fn gradcheck_resolution() -> f64 {
    crate::verdict::RESOLUTION
}

/// A duration as people read it: 12.3 µs, 4.56 ms, 1.23 s.
fn seconds(t: f64) -> String {
    if t < 1e-3 {
        format!("{:.1} µs", t * 1e6)
    } else if t < 1.0 {
        format!("{:.2} ms", t * 1e3)
    } else {
        format!("{t:.2} s")
    }
}

/// The report as pretty JSON.
pub fn render_json(r: &Report) -> String {
    serde_json::to_string_pretty(r).expect("reports serialise")
}

/// The verdict and one line per tensor that did not pass (reason, diagnosis): the failure
/// text of a JUnit testcase and of batch summaries.
pub fn failure_summary(r: &Report) -> String {
    let mut s = format!(
        "{}: difference {} (notebook threshold {})\n",
        r.verdict.label(),
        py_repr(r.difference),
        py_repr(r.threshold)
    );
    for t in r.tensors.iter().filter(|t| !t.passed) {
        let _ = write!(
            s,
            "{} {} difference {}",
            t.name,
            t.verdict.label(),
            sci(t.difference, 3)
        );
        if let Some(d) = &t.diagnosis {
            let _ = write!(s, ": {}", d.message);
        } else if let Some(why) = &t.reason {
            let _ = write!(s, ": {why}");
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_and_numpy_do() {
        assert_eq!(py_repr(0.2850931567761623), "0.2850931567761623");
        assert_eq!(py_repr(1.1890913024229996e-7), "1.1890913024229996e-07");
        assert_eq!(py_repr(2e-7), "2e-07");
        assert_eq!(sci(2.531631, 6), "2.531631e+00");
        assert_eq!(sci(-7.674312e-2, 2), "-7.67e-02");
        assert_eq!(sci(1.5e100, 1), "1.5e+100");
    }
}
