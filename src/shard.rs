//! Checks that span machines: `check --shard I/N` evaluates the I-th of N contiguous
//! slices of the parameters (at ε and at 2ε, as a whole check does) and writes them as a
//! partial; `merge` joins the partials into the report one run would give (J± are stored
//! with round-trip precision, so the merged J± are bit-identical).
//!
//! Every partial carries a fingerprint of the problem it was computed on (θ, X, Y, masks,
//! model spec) and its settings; merge refuses partials of another problem, by name.
//!
//! A front end. May use: `check`, `problem`, `io`, `eval`.

use std::ops::Range;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::check::{Evaluation, GradCheck};
use crate::error::{Error, Result};
use crate::problem::Problem;

/// One evaluation's values over a shard's range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slice {
    /// J(θ + ε·e_i) for i in the range (minus J(θ) when `deltas`).
    #[serde(with = "lossless")]
    pub plus: Vec<f64>,
    /// J(θ − ε·e_i) for i in the range (minus J(θ) when `deltas`).
    #[serde(with = "lossless")]
    pub minus: Vec<f64>,
    /// Whether plus/minus are changes from J(θ) (the Δ paths).
    pub deltas: bool,
    /// Kink flags (bit 0: +ε crossed, bit 1: −ε crossed).
    pub kinks: Vec<u8>,
    /// Noise scale of the plain paths (see [`crate::eval::cpu::noise_scale`]).
    pub cost_scale: f64,
    /// Unit roundoff of the precision.
    pub unit_roundoff: f64,
    /// Real steps (f32), else none.
    pub steps: Option<Vec<f64>>,
    /// Δ paths: Σ|Δloss|/m of the ± steps.
    pub magnitudes: Option<Vec<[f64; 2]>>,
    /// Plain f64: the nominal-step gaps.
    pub step_errors: Option<Vec<f64>>,
    /// Layered nets: the widths max-pool ties leave open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_widths: Option<Vec<f64>>,
}

/// The J± of one shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Partial {
    /// [I, N], 1-based I.
    pub shard: [usize; 2],
    /// [start, end) of the parameters evaluated.
    pub range: [usize; 2],
    /// N of the whole problem.
    pub n_params: usize,
    /// FNV-1a of the problem (θ, X, Y, masks, model spec) and ε, precision, backend kind.
    pub fingerprint: String,
    /// ε.
    pub epsilon: f64,
    /// Evaluator.
    pub backend: String,
    /// Precision and arithmetic.
    pub precision: crate::eval::Precision,
    /// J(θ).
    #[serde(with = "lossless_one")]
    pub cost: f64,
    /// At ε.
    pub at: Slice,
    /// At 2ε (the truncation estimate).
    pub wide: Slice,
}

/// J± as JSON keeps them: finite values as numbers (round-trip precision), ±∞ and NaN as
/// the strings "inf", "-inf", "NaN" (JSON has no such numbers: written as null, an
/// infinite J± of a saturated output came back unknown and the merge refused what the
/// single run judged).
mod lossless {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    pub(super) enum Num {
        Finite(f64),
        Text(String),
        Missing(()),
    }

    pub(super) fn to_num(v: f64) -> Num {
        if v.is_finite() {
            Num::Finite(v)
        } else if v.is_nan() {
            Num::Text("NaN".into())
        } else if v > 0.0 {
            Num::Text("inf".into())
        } else {
            Num::Text("-inf".into())
        }
    }

    pub(super) fn from_num<E: serde::de::Error>(n: Num) -> Result<f64, E> {
        match n {
            Num::Finite(v) => Ok(v),
            Num::Text(t) => match t.as_str() {
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                "NaN" => Ok(f64::NAN),
                other => Err(E::custom(format!("{other:?} is not a number"))),
            },
            // Partials written before non-finite values were kept.
            Num::Missing(()) => Ok(f64::NAN),
        }
    }

    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|&x| to_num(x)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Vec::<Num>::deserialize(d)?
            .into_iter()
            .map(from_num)
            .collect()
    }
}

/// [`lossless`] for one value.
mod lossless_one {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        super::lossless::to_num(*v).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        super::lossless::from_num(super::lossless::Num::deserialize(d)?)
    }
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

/// FNV-1a, 64 bits: a stable fingerprint (std's hashers promise no stability across
/// releases, and partials outlive the binary that wrote them).
struct Fnv(u64);

impl Fnv {
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn floats<'a>(&mut self, v: impl IntoIterator<Item = &'a f64>) {
        for x in v {
            self.bytes(&x.to_bits().to_le_bytes());
        }
    }
}

/// The fingerprint of a problem (without the gradients, which merge brings itself) and
/// the settings that change J±.
pub fn fingerprint(p: &Problem, epsilon: f64, precision: crate::eval::Precision) -> String {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    let spec = match p.model.net().and_then(|n| n.spec.as_ref()) {
        Some(net) => serde_json::to_string(net),
        None => serde_json::to_string(p.model.spec()),
    };
    h.bytes(spec.unwrap_or_default().as_bytes());
    h.floats(p.params.as_slice());
    h.floats(p.data.x.iter());
    h.floats(p.data.y.iter());
    for m in p.data.masks.iter().flatten() {
        h.floats(m.iter());
    }
    h.floats([&epsilon]);
    h.bytes(precision.label().as_bytes());
    format!("{:016x}", h.0)
}

fn slice_of(e: Evaluation, range: &Range<usize>) -> Slice {
    let r = range.clone();
    Slice {
        plus: e.plus[r.clone()].to_vec(),
        minus: e.minus[r.clone()].to_vec(),
        deltas: e.deltas,
        kinks: e.kinks[r.clone()].to_vec(),
        cost_scale: e.cost_scale,
        unit_roundoff: e.unit_roundoff,
        steps: e.steps.map(|s| s[r.clone()].to_vec()),
        magnitudes: e.magnitudes.map(|s| s[r.clone()].to_vec()),
        step_errors: e.step_errors.map(|s| s[r.clone()].to_vec()),
        tie_widths: e.tie_widths.map(|s| s[r].to_vec()),
    }
}

/// Evaluates shard I/N of a problem with the check's settings (at ε and 2ε).
pub fn evaluate_shard(gc: &GradCheck, p: &Problem, i: usize, n: usize) -> Result<Partial> {
    if gc.stencil != 2 {
        return Err(Error::Config(
            "--shard with --stencil 4: the merge judges both from the same two evaluations; shard with the default stencil and merge with --stencil 4".into(),
        ));
    }
    let total = p.model.n_params();
    let range = shard_range(total, i, n);
    let mut g = gc.clone();
    g.range = Some(range.clone());
    let evaluator = g.evaluator()?;
    let precision = evaluator.precision();
    let (epsilon, _) = g.defaults_for(precision);
    let (e, w) = g.evaluate_pair(&*evaluator, &p.model, &p.params, &p.data, epsilon)?;
    Ok(Partial {
        shard: [i, n],
        range: [range.start, range.end],
        n_params: total,
        fingerprint: fingerprint(p, epsilon, e.precision),
        epsilon,
        backend: e.backend.clone(),
        precision: e.precision,
        cost: e.cost,
        at: slice_of(e, &range),
        wide: slice_of(w, &range),
    })
}

/// Reads a partial written by `check --shard`.
/// Part files are as large as their J± (47 MiB for half of a 533,505-parameter net):
/// capped by the input budget ([`crate::io::input_budget`]), not the 16 MiB of a spec.
pub fn load_partial(path: &Path) -> Result<Partial> {
    crate::io::read_json_capped(path, "gradcheck shard", crate::io::input_budget())
}

/// Joins partials covering 0..N exactly once, all of problem `p`, into the evaluations at
/// ε and 2ε, and ε. CPU and GPU partials are not mixed unless `mix_backends`.
pub fn merge(
    parts: &[Partial],
    p: &Problem,
    mix_backends: bool,
) -> Result<(Evaluation, Evaluation, f64)> {
    let n_params = p.model.n_params();
    let first = parts
        .first()
        .ok_or_else(|| Error::Config("merge needs at least one shard".into()))?;
    let mut sorted: Vec<&Partial> = parts.iter().collect();
    sorted.sort_by_key(|p| p.range[0]);
    let mut next = 0;
    let kind = |b: &str| b.split(' ').next().unwrap_or("").to_string();
    for q in &sorted {
        let what = format!("shard {}/{}", q.shard[0], q.shard[1]);
        if q.n_params != n_params {
            return Err(Error::Shape(format!(
                "{what} is of a problem with {} parameters, this one has {n_params}",
                q.n_params
            )));
        }
        if q.epsilon != first.epsilon || q.precision != first.precision {
            return Err(Error::Config(format!(
                "{what} used ε = {:e} in {}, another shard ε = {:e} in {}",
                q.epsilon, q.precision, first.epsilon, first.precision
            )));
        }
        let want = fingerprint(p, q.epsilon, q.precision);
        if q.fingerprint != want {
            return Err(Error::Config(format!(
                "{what} was computed on another problem (fingerprint {} ≠ {want} of these --params/--data/--model): its J± do not belong to these inputs",
                q.fingerprint
            )));
        }
        if !mix_backends && kind(&q.backend) != kind(&first.backend) {
            return Err(Error::Config(format!(
                "{what} ran on {}, another shard on {}: CPU and GPU J± round differently (pass --mix-backends to merge them anyway)",
                q.backend, first.backend
            )));
        }
        let len = q.range[1].saturating_sub(q.range[0]);
        for s in [&q.at, &q.wide] {
            let ok = s.plus.len() == len
                && s.minus.len() == len
                && s.kinks.len() == len
                && s.steps.as_ref().is_none_or(|v| v.len() == len)
                && s.magnitudes.as_ref().is_none_or(|v| v.len() == len)
                && s.step_errors.as_ref().is_none_or(|v| v.len() == len);
            if !ok {
                return Err(Error::Shape(format!(
                    "{what}: its J± do not match its range {:?}",
                    q.range
                )));
            }
        }
        if q.range[0] != next {
            return Err(Error::Config(format!(
                "shards leave parameters {next}..{} uncovered or covered twice (next shard starts at {})",
                q.range[0].max(next),
                q.range[0]
            )));
        }
        next = q.range[1];
    }
    if next != n_params {
        return Err(Error::Config(format!(
            "shards cover 0..{next} of 0..{n_params}"
        )));
    }
    let join = |pick: &dyn Fn(&Partial) -> &Slice| -> Evaluation {
        let cat = |f: &dyn Fn(&Slice) -> Vec<f64>| -> Vec<f64> {
            sorted.iter().flat_map(|q| f(pick(q))).collect()
        };
        let all = |f: &dyn Fn(&Slice) -> bool| sorted.iter().all(|q| f(pick(q)));
        let s0 = pick(first);
        Evaluation {
            cost: first.cost,
            plus: cat(&|s| s.plus.clone()),
            minus: cat(&|s| s.minus.clone()),
            deltas: s0.deltas,
            cost_scale: s0.cost_scale,
            kinks: sorted
                .iter()
                .flat_map(|q| pick(q).kinks.iter().copied())
                .collect(),
            magnitudes: all(&|s| s.magnitudes.is_some()).then(|| {
                sorted
                    .iter()
                    .flat_map(|q| pick(q).magnitudes.clone().unwrap_or_default())
                    .collect()
            }),
            step_errors: all(&|s| s.step_errors.is_some())
                .then(|| cat(&|s| s.step_errors.clone().unwrap_or_default())),
            tie_widths: all(&|s| s.tie_widths.is_some())
                .then(|| cat(&|s| s.tie_widths.clone().unwrap_or_default())),
            backend: first.backend.clone(),
            precision: first.precision,
            unit_roundoff: s0.unit_roundoff,
            steps: all(&|s| s.steps.is_some())
                .then(|| cat(&|s| s.steps.clone().unwrap_or_default())),
            notes: vec![format!("merged from {} shards", parts.len())],
            kernel_times: Vec::new(),
        }
    };
    Ok((join(&|q| &q.at), join(&|q| &q.wide), first.epsilon))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_survive_the_json() {
        let slice = Slice {
            plus: vec![1.5, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, -0.0],
            minus: vec![0.1; 5],
            deltas: false,
            kinks: vec![0; 5],
            cost_scale: 1.0,
            unit_roundoff: 1e-16,
            steps: None,
            magnitudes: None,
            step_errors: None,
            tie_widths: None,
        };
        let text = serde_json::to_string(&slice).unwrap();
        assert!(text.contains("\"inf\"") && text.contains("\"-inf\"") && text.contains("\"NaN\""));
        let back: Slice = serde_json::from_str(&text).unwrap();
        assert_eq!(back.plus[..3], slice.plus[..3]);
        assert!(back.plus[3].is_nan());
        assert!(back.plus[4] == 0.0 && back.plus[4].is_sign_negative());
        // Partials of earlier versions wrote null: read as unknown, not refused.
        let old = text.replace("\"inf\"", "null");
        let back: Slice = serde_json::from_str(&old).unwrap();
        assert!(back.plus[1].is_nan());
    }

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
