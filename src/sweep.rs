//! The ε sweep: the difference (overall and per tensor) for ε over decades — the V of
//! truncation error (∝ ε²) falling and rounding error (∝ u/ε) rising — per precision, and
//! the best ε.
//!
//! A front end. May use: `check`, `model`.

use serde::Serialize;

use crate::check::{GradCheck, Precision};
use crate::error::{Error, Result};
use crate::metric::diff_and_rms;
use crate::model::{Data, Grads, Model, Params};

/// One ε of a curve.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepPoint {
    /// ε.
    pub epsilon: f64,
    /// The difference over the counted elements (kinks excluded per policy).
    pub difference: f64,
    /// Elements whose step crossed a kink at this ε.
    pub kinks: usize,
    /// Per tensor, in flat order.
    pub tensors: Vec<TensorPoint>,
}

/// One tensor's difference at one ε.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorPoint {
    /// "W1", "b1", …
    pub name: String,
    /// The difference over its counted elements.
    pub difference: f64,
}

/// One precision's curve.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepCurve {
    /// e.g. "gpu f64", "cpu f64", "gpu f32".
    pub label: String,
    /// One point per ε, largest ε first.
    pub points: Vec<SweepPoint>,
    /// The ε with the smallest difference.
    pub best_epsilon: f64,
    /// The notebook's threshold for this precision (drawn on the plot).
    pub threshold: f64,
}

/// The whole sweep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sweep {
    /// What was swept: the net, m, backend (the plot's title).
    pub title: String,
    /// The first curve's threshold (every curve has its own).
    pub threshold: f64,
    /// One curve per precision.
    pub curves: Vec<SweepCurve>,
}

/// `epsilon = auto`: a short sweep at the check's precision, one ε per decade from 1e-2
/// to 1e-9, and the best ε with a note saying so.
pub fn auto_epsilon(gc: &GradCheck, p: &crate::problem::Problem) -> Result<(f64, String)> {
    let eps = epsilons(1e-2, 1e-9, 1)?;
    let s = sweep(
        gc,
        &p.model,
        &p.params,
        &p.data,
        &p.grads,
        &eps,
        &[gc.precision],
    )?;
    let best = s.curves[0].best_epsilon;
    Ok((
        best,
        format!("epsilon auto: a sweep over 1e-2 … 1e-9 chose ε = {best:e}"),
    ))
}

/// ε from `from` down to `to`, `per_decade` values per decade (log-spaced, both ends kept).
pub fn epsilons(from: f64, to: f64, per_decade: usize) -> Result<Vec<f64>> {
    if !(from.is_finite() && to.is_finite() && from <= 1.0 && to > 0.0 && from > to)
        || per_decade == 0
    {
        return Err(Error::Config(format!(
            "sweep range {from:e} … {to:e} with {per_decade} per decade: need 1 ≥ from > to > 0 and at least 1 per decade"
        )));
    }
    let steps = ((from / to).log10() * per_decade as f64).round() as usize;
    if steps > 400 {
        return Err(Error::Config(format!(
            "a sweep of {} values is too many (at most 400)",
            steps + 1
        )));
    }
    Ok((0..=steps)
        .map(|k| from * 10f64.powf(-(k as f64) / per_decade as f64))
        .collect())
}

/// Runs the check at every ε for each precision in `precisions`, with the backend and
/// kink policy of `gc`.
pub fn sweep(
    gc: &GradCheck,
    model: &Model,
    params: &Params,
    data: &Data,
    grads: &Grads,
    eps: &[f64],
    precisions: &[Precision],
) -> Result<Sweep> {
    let mut curves: Vec<SweepCurve> = Vec::new();
    let mut swept: Vec<Precision> = Vec::new();
    for &p in precisions {
        let g = gc.clone().precision(p);
        // Each precision the backend really has, once: a backend without the one asked
        // for (the CPU has no f32) resolves it to another, already swept or not wanted.
        let resolved = g.resolved_precision();
        let wanted = match p {
            Precision::Auto => resolved,
            other => other,
        };
        if swept.contains(&resolved) || resolved != wanted {
            continue;
        }
        swept.push(resolved);
        curves.push(curve(&g, model, params, data, grads, eps)?);
    }
    Ok(Sweep {
        title: format!(
            "{} net, m = {}, {} — difference against ε",
            sizes_of(model).join("-"),
            data.m(),
            model.loss()
        ),
        threshold: curves
            .first()
            .map_or(crate::check::DEFAULT_THRESHOLD, |c| c.threshold),
        curves,
    })
}

/// One precision's curve: the notebook's difference (and each tensor's) at every ε, over
/// the elements whose steps cross no kink (kinked ones have no meaningful central
/// difference): the V of rounding and truncation.
fn curve(
    g: &GradCheck,
    model: &Model,
    params: &Params,
    data: &Data,
    grads: &Grads,
    eps: &[f64],
) -> Result<SweepCurve> {
    let mut points = Vec::with_capacity(eps.len());
    let mut label = String::new();
    let mut threshold = crate::check::DEFAULT_THRESHOLD;
    let grad = grads.as_slice();
    let include = g.kinks == crate::check::KinkPolicy::Include;
    // A few ε per call: shared preparation, bounded memory (each evaluation holds several
    // vectors of N).
    for group in eps.chunks(4) {
        let evals = g.evaluate_many(model, params, data, group)?;
        for (&e, eval) in group.iter().zip(evals) {
            threshold = g.defaults_for(eval.precision).1;
            let approx = eval.gradapprox(e);
            let smooth = |r: std::ops::Range<usize>| {
                r.filter(|&i| include || eval.kinks[i] == 0)
                    .collect::<Vec<_>>()
            };
            let (difference, _) = diff_and_rms(grad, &approx, &smooth(0..grad.len()));
            let tensors = model
                .layout()
                .tensors()
                .iter()
                .map(|t| TensorPoint {
                    name: t.name.clone(),
                    difference: diff_and_rms(grad, &approx, &smooth(t.range())).0,
                })
                .collect();
            label = format!(
                "{} {}",
                eval.backend.split(' ').next().unwrap_or("cpu"),
                eval.precision
            );
            points.push(SweepPoint {
                epsilon: e,
                difference,
                kinks: eval.kinks.iter().filter(|&&k| k != 0).count(),
                tensors,
            });
        }
    }
    let best_epsilon = points
        .iter()
        .filter(|p| !p.difference.is_nan())
        .min_by(|a, b| a.difference.total_cmp(&b.difference))
        .map(|p| p.epsilon)
        .unwrap_or(f64::NAN);
    Ok(SweepCurve {
        label,
        points,
        best_epsilon,
        threshold,
    })
}

/// The net's sizes for the title: the MLP's layer widths, or a layered net's input shape
/// and layer types (activations belong to the layer before).
fn sizes_of(model: &Model) -> Vec<String> {
    match model.net() {
        Some(net) => std::iter::once(
            net.input_shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join("×"),
        )
        .chain(
            net.layers
                .iter()
                .map(|l| l.kind())
                .filter(|k| *k != "activation")
                .map(str::to_string),
        )
        .collect(),
        None => model.sizes().iter().map(|n| n.to_string()).collect(),
    }
}

/// The sweep as a table: one row per ε, one column per curve.
pub fn render_text(s: &Sweep) -> String {
    let mut out = format!("{}\n{:>10}", s.title, "epsilon");
    for c in &s.curves {
        out += &format!(" {:>14}", c.label);
    }
    out.push('\n');
    if let Some(first) = s.curves.first() {
        for (k, p) in first.points.iter().enumerate() {
            out += &format!("{:>10.2e}", p.epsilon);
            for c in &s.curves {
                let d = c.points[k].difference;
                let mark = if c.best_epsilon == c.points[k].epsilon {
                    "*"
                } else {
                    " "
                };
                out += &format!(" {:>13.3e}{mark}", d);
            }
            out.push('\n');
        }
    }
    for c in &s.curves {
        out += &format!("best ε for {}: {:.2e}\n", c.label, c.best_epsilon);
    }
    out
}

/// The sweep as an SVG plot: difference against ε on log axes, the threshold dashed, the
/// best ε of each curve marked.
pub fn render_svg(s: &Sweep) -> String {
    let plot = Plot::of(s);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        Plot::W,
        Plot::H
    );
    svg += &plot.axes(&s.title);
    svg += &plot.curves(s);
    svg += "</svg>\n";
    svg
}

/// The plot's frame: log₁₀ ranges of ε (x) and of the difference (y), decades whole, and
/// where a point lands.
struct Plot {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Plot {
    const W: f64 = 820.0;
    const H: f64 = 460.0;
    /// Margins: left, right (the legend), top, bottom.
    const ML: f64 = 70.0;
    const MR: f64 = 220.0;
    const MT: f64 = 30.0;
    const MB: f64 = 50.0;
    /// Differences below this (exact zeros) sit on it.
    const FLOOR: f64 = 1e-17;

    fn of(s: &Sweep) -> Plot {
        let ly = |d: f64| d.max(Self::FLOOR).log10();
        let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut y0, mut y1) = (ly(s.threshold), ly(s.threshold));
        for c in &s.curves {
            y0 = y0.min(ly(c.threshold));
            y1 = y1.max(ly(c.threshold));
            for p in &c.points {
                x0 = x0.min(p.epsilon.log10());
                x1 = x1.max(p.epsilon.log10());
                y0 = y0.min(ly(p.difference));
                y1 = y1.max(ly(p.difference));
            }
        }
        Plot {
            x0: x0.floor(),
            x1: x1.ceil().max(x0.floor() + 1.0),
            y0: y0.floor(),
            y1: y1.ceil().max(y0.floor() + 1.0),
        }
    }

    /// x of ε (increasing to the right, as axes do).
    fn px(&self, e: f64) -> f64 {
        Self::ML + (e.log10() - self.x0) / (self.x1 - self.x0) * (Self::W - Self::ML - Self::MR)
    }

    /// y of a difference.
    fn py(&self, d: f64) -> f64 {
        Self::MT
            + (self.y1 - d.max(Self::FLOOR).log10()) / (self.y1 - self.y0)
                * (Self::H - Self::MT - Self::MB)
    }

    /// Title, frame, decade grid lines and labels, axis names.
    fn axes(&self, title: &str) -> String {
        let (left, right, top, bottom) =
            (Self::ML, Self::W - Self::MR, Self::MT, Self::H - Self::MB);
        let mut svg = format!(
            "<text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>\n",
            (left + right) / 2.0,
            xml_text(title)
        );
        svg += &format!(
            "<rect x=\"{left}\" y=\"{top}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>\n",
            right - left,
            bottom - top
        );
        let mut d = self.x0;
        while d <= self.x1 + 1e-9 {
            let x = self.px(10f64.powf(d));
            svg += &format!(
                "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{bottom}\" stroke=\"#ddd\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">1e{d}</text>\n",
                bottom + 18.0
            );
            d += 1.0;
        }
        let step = ((self.y1 - self.y0) / 10.0).ceil().max(1.0);
        let mut d = self.y0;
        while d <= self.y1 + 1e-9 {
            let y = self.py(10f64.powf(d));
            svg += &format!(
                "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{right}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">1e{d}</text>\n",
                left - 6.0,
                y + 4.0
            );
            d += step;
        }
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">ε</text>\n",
            (left + right) / 2.0,
            Self::H - 12.0
        );
        svg += &format!(
            "<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">difference</text>\n",
            (top + bottom) / 2.0,
            (top + bottom) / 2.0
        );
        svg
    }

    /// Each precision's threshold (dashed), its curve, its best ε and its legend entry.
    fn curves(&self, s: &Sweep) -> String {
        let (left, right, top) = (Self::ML, Self::W - Self::MR, Self::MT);
        let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"];
        let mut svg = String::new();
        // Each precision's notebook threshold, dashed in its curve's colour.
        for (n, c) in s.curves.iter().enumerate() {
            let col = colors[n % colors.len()];
            let ty = self.py(c.threshold);
            // Labels of equal thresholds stack upwards instead of overprinting.
            let same = s.curves[..n]
                .iter()
                .filter(|o| o.threshold == c.threshold)
                .count() as f64;
            svg += &format!(
                "<line class=\"threshold\" x1=\"{left}\" y1=\"{ty:.1}\" x2=\"{right}\" y2=\"{ty:.1}\" stroke=\"{col}\" stroke-dasharray=\"6 4\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"{col}\" text-anchor=\"end\">threshold {:e} ({})</text>\n",
                right - 4.0,
                ty - 4.0 - 14.0 * same,
                c.threshold,
                xml_text(&c.label)
            );
        }
        for (n, c) in s.curves.iter().enumerate() {
            let col = colors[n % colors.len()];
            let pts: Vec<String> = c
                .points
                .iter()
                .map(|p| format!("{:.1},{:.1}", self.px(p.epsilon), self.py(p.difference)))
                .collect();
            svg += &format!(
                "<polyline fill=\"none\" stroke=\"{col}\" stroke-width=\"2\" points=\"{}\"/>\n",
                pts.join(" ")
            );
            if let Some(b) = c.points.iter().find(|p| p.epsilon == c.best_epsilon) {
                svg += &format!(
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"5\" fill=\"{col}\"/>\n",
                    self.px(b.epsilon),
                    self.py(b.difference)
                );
            }
            let row = 18.0 * n as f64;
            svg += &format!(
                "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{col}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{} (best ε {:.2e})</text>\n",
                right + 6.0,
                top + 20.0 + row,
                right + 26.0,
                top + 20.0 + row,
                right + 30.0,
                top + 24.0 + row,
                xml_text(&c.label),
                c.best_epsilon
            );
        }
        svg
    }
}

/// Text for an SVG element.
fn xml_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epsilon_grid_spans_the_decades() {
        let e = epsilons(1e-1, 1e-10, 3).unwrap();
        assert_eq!(e.len(), 28);
        assert!((e[0] - 1e-1).abs() < 1e-16 && (e[27] / 1e-10 - 1.0).abs() < 1e-12);
        assert!(epsilons(1e-10, 1e-1, 3).is_err());
        assert!(epsilons(1e-1, 1e-10, 0).is_err());
    }
}
