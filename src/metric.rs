//! The notebook's difference and the RMS error: the two numbers every layer above compares
//! gradients by (verdicts, diagnoses, GPU-vs-CPU numerics). Imports nothing from the crate.

/// ‖a − b‖₂ / (‖a‖₂ + ‖b‖₂), 0 when both are zero (the notebook's difference).
pub fn difference(a: &[f64], b: &[f64]) -> f64 {
    let (mut num, mut na, mut nb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        num += (x - y) * (x - y);
        na += x * x;
        nb += y * y;
    }
    let den = na.sqrt() + nb.sqrt();
    if den == 0.0 { 0.0 } else { num.sqrt() / den }
}

/// The difference and the RMS of a − b over the elements `idx` (0 RMS when `idx` is empty).
pub fn diff_and_rms(a: &[f64], b: &[f64], idx: &[usize]) -> (f64, f64) {
    let (x, y): (Vec<f64>, Vec<f64>) = idx.iter().map(|&i| (a[i], b[i])).unzip();
    let sq: f64 = x.iter().zip(&y).map(|(p, q)| (p - q) * (p - q)).sum();
    let rms = if idx.is_empty() {
        0.0
    } else {
        (sq / idx.len() as f64).sqrt()
    };
    (difference(&x, &y), rms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn difference_is_symmetric_and_zero_safe() {
        assert_eq!(difference(&[0.0, 0.0], &[0.0, 0.0]), 0.0);
        assert_eq!(difference(&[1.0], &[-1.0]), 1.0);
        let d = difference(&[1.0, 2.0], &[1.0, 2.2]);
        assert!((d - 0.2 / (5f64.sqrt() + (1.0 + 4.84f64).sqrt())).abs() < 1e-15);
    }
}
