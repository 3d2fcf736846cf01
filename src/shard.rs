//! Checks that span machines: `check --shard I/N` evaluates the I-th of N contiguous
//! slices of the parameters and writes its J± as a partial; `merge` joins the partials
//! into the report one run would give (J± are stored with round-trip precision, so the
//! merged J± are bit-identical).
//!
//! A front end. May use: `check`, `problem`, `io`, `eval`.

use std::ops::Range;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::check::{Evaluation, GradCheck};
use crate::error::{Error, Result};
use crate::problem::Problem;

/// The J± of one shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Partial {
    /// [I, N], 1-based I.
    pub shard: [usize; 2],
    /// [start, end) of the parameters evaluated.
    pub range: [usize; 2],
    /// N of the whole problem (guards against merging shards of different problems).
    pub n_params: usize,
    /// ε.
    pub epsilon: f64,
    /// Evaluator.
    pub backend: String,
    /// Precision.
    pub precision: String,
    /// J(θ).
    pub cost: f64,
    /// Noise scale (see [`crate::eval::cpu::noise_scale`]).
    pub cost_scale: f64,
    /// Unit roundoff of the precision.
    pub unit_roundoff: f64,
    /// J(θ + ε·e_i) for i in the range (minus J(θ) when `deltas`).
    pub plus: Vec<f64>,
    /// J(θ − ε·e_i) for i in the range (minus J(θ) when `deltas`).
    pub minus: Vec<f64>,
    /// Whether plus/minus are changes from J(θ) (the f32 Δ path).
    #[serde(default)]
    pub deltas: bool,
    /// Kink flags for i in the range.
    pub kinks: Vec<bool>,
    /// Real steps for i in the range (f32), else none.
    pub steps: Option<Vec<f64>>,
}

/// Parses "I/N" (1 ≤ I ≤ N).
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let bad = || {
        Error::Config(format!(
            "--shard {s:?}: expected I/N with 1 ≤ I ≤ N, e.g. 2/4"
        ))
    };
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if i == 0 || i > n {
        return Err(bad());
    }
    Ok((i, n))
}

/// The I-th (1-based) of N contiguous, nearly equal slices of 0..total.
pub fn shard_range(total: usize, i: usize, n: usize) -> Range<usize> {
    let cut = |k: usize| (total as u128 * k as u128 / n as u128) as usize;
    cut(i - 1)..cut(i)
}

/// Evaluates shard I/N of a problem with the check's settings.
pub fn evaluate_shard(gc: &GradCheck, p: &Problem, i: usize, n: usize) -> Result<Partial> {
    let total = p.model.n_params();
    let range = shard_range(total, i, n);
    let mut g = gc.clone();
    g.range = Some(range.clone());
    let precision = g.resolved_precision();
    let (epsilon, _) = g.defaults_for(precision);
    let e = g.evaluate(&p.model, &p.params, &p.data, epsilon)?;
    Ok(Partial {
        shard: [i, n],
        range: [range.start, range.end],
        n_params: total,
        epsilon,
        backend: e.backend,
        precision: e.precision,
        cost: e.cost,
        cost_scale: e.cost_scale,
        unit_roundoff: e.unit_roundoff,
        plus: e.plus[range.clone()].to_vec(),
        minus: e.minus[range.clone()].to_vec(),
        deltas: e.deltas,
        kinks: e.kinks[range.clone()].to_vec(),
        steps: e.steps.map(|s| s[range].to_vec()),
    })
}

/// Reads a partial written by `check --shard`.
pub fn load_partial(path: &Path) -> Result<Partial> {
    crate::io::read_json(path, "gradcheck shard")
}

/// Joins partials covering 0..n_params exactly once into one evaluation and its ε.
pub fn merge(parts: &[Partial], n_params: usize) -> Result<(Evaluation, f64)> {
    let first = parts
        .first()
        .ok_or_else(|| Error::Config("merge needs at least one shard".into()))?;
    let mut sorted: Vec<&Partial> = parts.iter().collect();
    sorted.sort_by_key(|p| p.range[0]);
    let mut next = 0;
    for p in &sorted {
        let what = format!("shard {}/{}", p.shard[0], p.shard[1]);
        if p.n_params != n_params {
            return Err(Error::Shape(format!(
                "{what} is of a problem with {} parameters, this one has {n_params}",
                p.n_params
            )));
        }
        if p.epsilon != first.epsilon || p.precision != first.precision || p.deltas != first.deltas
        {
            return Err(Error::Config(format!(
                "{what} used ε = {:e} in {}, another shard ε = {:e} in {}",
                p.epsilon, p.precision, first.epsilon, first.precision
            )));
        }
        let len = p.range[1].saturating_sub(p.range[0]);
        if p.plus.len() != len || p.minus.len() != len || p.kinks.len() != len {
            return Err(Error::Shape(format!(
                "{what}: its J± do not match its range {:?}",
                p.range
            )));
        }
        if p.range[0] != next {
            return Err(Error::Config(format!(
                "shards leave parameters {next}..{} uncovered or covered twice (next shard starts at {})",
                p.range[0].max(next),
                p.range[0]
            )));
        }
        next = p.range[1];
    }
    if next != n_params {
        return Err(Error::Config(format!(
            "shards cover 0..{next} of 0..{n_params}"
        )));
    }
    let cat =
        |f: &dyn Fn(&Partial) -> Vec<f64>| sorted.iter().flat_map(|p| f(p)).collect::<Vec<f64>>();
    let steps = if sorted.iter().all(|p| p.steps.is_some()) {
        Some(cat(&|p| p.steps.clone().unwrap_or_default()))
    } else {
        None
    };
    // On the Δ path each shard's scale is an RMS over its own range: recombine them.
    let cost_scale = if first.deltas {
        let sum: f64 = sorted
            .iter()
            .map(|p| (p.range[1] - p.range[0]) as f64 * p.cost_scale * p.cost_scale)
            .sum();
        (sum / n_params.max(1) as f64).sqrt()
    } else {
        first.cost_scale
    };
    let eval = Evaluation {
        cost: first.cost,
        plus: cat(&|p| p.plus.clone()),
        minus: cat(&|p| p.minus.clone()),
        deltas: first.deltas,
        cost_scale,
        kinks: sorted
            .iter()
            .flat_map(|p| p.kinks.iter().copied())
            .collect(),
        backend: first.backend.clone(),
        precision: first.precision.clone(),
        unit_roundoff: first.unit_roundoff,
        steps,
        notes: vec![format!("merged from {} shards", parts.len())],
    };
    Ok((eval, first.epsilon))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_parameters() {
        for total in [1, 7, 47, 1000] {
            for n in 1..=5 {
                let mut next = 0;
                for i in 1..=n {
                    let r = shard_range(total, i, n);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, total);
            }
        }
        assert_eq!(parse_shard("2/4").unwrap(), (2, 4));
        assert!(
            parse_shard("0/4").is_err() && parse_shard("5/4").is_err() && parse_shard("x").is_err()
        );
    }
}
