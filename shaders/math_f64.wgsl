// f64 elementary functions. SPIR-V's GLSL.std.450 Exp/Log/Tanh are defined for 16/32-bit
// floats only (Mesa returns garbage for f64), so the f64 kernels bring their own:
// range reduction + polynomial, accurate to a few ulps (tested in tests/gpu.rs against
// Rust's f64 over the ranges the costs use).

const LN2_HI: f64 = 6.93147180369123816490e-01; // trailing zeros: n * LN2_HI is exact
const LN2_LO: f64 = 1.90821492927058770002e-10;
const INV_LN2: f64 = 1.44269504088896338700e+00;

// exp(x) = 2^n · exp(r), |r| ≤ ln2/2 < 0.5; Taylor to degree 16.
fn exp_r(x0: real) -> real {
    if (x0 < -745.2) {
        return 0.0;
    }
    let x = min(x0, 709.7);
    let n = floor(x * INV_LN2 + 0.5);
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // 1 + (r + tail): the small parts first (exp_series_tail in shaders/common.wgsl).
    let p = 1.0 + (r + exp_series_tail(r));
    return ldexp(p, i32(n));
}

// log(x) = e·ln2 + 2·atanh(s), s = (f − 1)/(f + 1), f ∈ [√½, √2): |s| ≤ 0.172 (series in
// atanh_tail).
fn log_r(x: real) -> real {
    if (x <= 0.0) {
        return (x * 0.0 - 1.0e308) * 10.0; // −inf at run time, as log(0)
    }
    // x = f·2^e with f ∈ [√½, √2). No frexp: naga types its f64 exponent as i64, which
    // needs SHADER_INT64. Scale x into f32's range, estimate e from an f32 log2, fix up.
    var xs = x;
    var bias: i32 = 0;
    for (var i = 0; i < 12 && xs < 1.0e-30; i++) {
        xs = ldexp(xs, 100);
        bias -= 100;
    }
    for (var i = 0; i < 12 && xs > 1.0e30; i++) {
        xs = ldexp(xs, -100);
        bias += 100;
    }
    var e: i32 = i32(floor(log2(f32(xs))));
    var f: real = ldexp(xs, -e);
    if (f < 0.70710678118654752440) {
        f = f * 2.0;
        e = e - 1;
    } else if (f >= 1.41421356237309504880) {
        f = f * 0.5;
        e = e + 1;
    }
    e = e + bias;
    let s = (f - 1.0) / (f + 1.0);
    let s2 = s * s;
    let q = atanh_tail(s2); // shaders/common.wgsl
    let ef = real(e);
    // 2s + 2s·s²·q, with the small parts added first.
    let t = 2.0 * s * s2 * q;
    return ef * LN2_HI + (2.0 * s + (t + ef * LN2_LO));
}

// tanh: odd series of sinh for |x| < 0.5 (no cancellation), exp form beyond.
fn tanh_r(x: real) -> real {
    let ax = abs(x);
    if (ax < 0.5) {
        let x2 = x * x;
        var p: real = 1.0 / 355687428096000.0;
        p = p * x2 + 1.0 / 1307674368000.0;
        p = p * x2 + 1.0 / 6227020800.0;
        p = p * x2 + 1.0 / 39916800.0;
        p = p * x2 + 1.0 / 362880.0;
        p = p * x2 + 1.0 / 5040.0;
        p = p * x2 + 1.0 / 120.0;
        p = p * x2 + 1.0 / 6.0;
        let sh = x + x * x2 * p;
        return sh / sqrt(1.0 + sh * sh);
    }
    let e = exp_r(-2.0 * ax);
    let t = (1.0 - e) / (1.0 + e);
    return select(t, -t, x < 0.0);
}
