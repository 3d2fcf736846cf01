// Shared by every kernel: the bindings, the per-dispatch job, activations.
// `real` (f32 or f64) and the math functions exp_r/log_r/tanh_r are prepended by the host.

// One dispatch's description; the host writes one per dispatch at a 256-byte stride and
// binds it with a dynamic offset (all u32: reals live in the model buffer's header).
struct Job {
    m: u32,          // samples
    first: u32,      // flat index of the chunk's first parameter
    cols: u32,       // C = K·m columns of the batch buffers
    w_param: u32,    // flat index of W_l[0,0] (parameter space)
    rows_l: u32,     // n_l
    cols_l: u32,     // n_{l−1}
    in_dim: u32,     // input rows of this stage's matrix
    out_dim: u32,    // output rows of this stage
    act: u32,        // activation code of this stage's layer
    is_output: u32,  // 1 when this stage produces the output layer's Z
    w_off: u32,      // model-buffer offset of this stage's W (row-major out_dim × in_dim)
    b_off: u32,      // model-buffer offset of this stage's b
    in_off: u32,     // offset of the input activations (model buffer when in_is_x, else base)
    in_is_x: u32,    // 1 when the input is X
    z_off: u32,      // base-buffer offset of this stage's base Z (out_dim × m)
    a_off: u32,      // base-buffer offset of this stage's base A
    y_off: u32,      // model-buffer offset of Y
    loss: u32,       // cost code
    slope_idx: u32,  // model-buffer index of this stage's leaky-ReLU slope
    theta_off: u32,  // model-buffer offset of θ
    l2: u32,         // 1 when the L2 term is on
    total: u32,      // threads that do work in this dispatch
    n_params: u32,   // N (the Δ path writes Σ|Δloss|/m at results[2N + …])
    delta: u32,      // 1 on the Δ path (see act_delta): stages carry changes, not values
    mask_off: u32,   // model-buffer offset of this stage's dropout factors D/keep_prob (0: none)
    sig_off: u32,    // Δ path, BCE: base-buffer offset of σ(−z0) (nL × m), σ(z0) follows
    sc_v: u32,       // fused: base-buffer offset of the shortcut's v table ((r·m + j)·nL + o)
    sc_lo: u32,      // fused: base-buffer offset of the shortcut's interval lows (r·m + j)
    sc_hi: u32,      // fused: … and highs
    n_out: u32,      // nL, the output layer's width
    out_z: u32,      // base-buffer offset of the output layer's base Z (the losses read it)
    out_a: u32,      // … and of its base A
    out_act: u32,    // the output layer's activation code
    out_slope: u32,  // model-buffer index of its leaky-ReLU slope
    layer: u32,      // fused: the perturbed layer l
    list_off: u32,   // fused: kinks-buffer offset of the layer's work list (count, then k's)
    scratch_w: u32,  // fused_exact: widest layer after l (each thread's two scratch vectors)
    threads: u32,    // fused_exact: threads of the grid-stride loop
    j_begin: u32,    // fused: the samples of this dispatch, [j_begin, j_end) (see `Running`)
    j_end: u32,
    item0: u32,      // layered: the first (perturbation, sample) item of this dispatch
    widest: u32,     // layered: entries per scratch region (the widest layer output)
    n_layers: u32,   // layered: layers in the table
    tensor_tab: u32, // layered: plist offset of the tensor table
    n_tensors: u32,  // layered: its rows
}

// Model buffer: header [0] ε, [1] λ/(2m), [2] Σ‖W‖², [3] the shortcut's margin, [4..]
// leaky slopes per layer; then θ, X, Y, and the dropout factors of the layers that have
// dropout. The staged kernels' perturbation k is parameter plist[first + k/2].
@group(0) @binding(0) var<uniform> job: Job;
@group(0) @binding(1) var<storage, read> model: array<real>;
@group(0) @binding(2) var<storage, read_write> base: array<real>;
@group(0) @binding(3) var<storage, read_write> src: array<real>;
@group(0) @binding(4) var<storage, read_write> dst: array<real>;
@group(0) @binding(5) var<storage, read_write> results: array<real>;
@group(0) @binding(6) var<storage, read_write> kinks: array<atomic<u32>>;
@group(0) @binding(7) var<storage, read> plist: array<u32>;

// Activation `code` of this stage's layer (leaky slope from the header).
fn act(code: u32, z: real) -> real {
    return act_with(code, model[job.slope_idx], z);
}

fn act_with(code: u32, slope: real, z: real) -> real {
    switch code {
        case 1u: { return select(0.0, z, z > 0.0); }
        case 2u: { return 1.0 / (1.0 + exp_r(-z)); }
        case 3u: { return tanh_r(z); }
        case 4u: { return select(slope * z, z, z > 0.0); }
        default: { return z; }
    }
}

// e^x − 1 − x by Taylor to x^16/16!, for |x| ≤ 0.5 (remainder < 3e-20 relative); f64's
// exp_r uses it on its reduced argument.
fn exp_series_tail(x: real) -> real {
    var p: real = 1.0 / 20922789888000.0;
    p = p * x + 1.0 / 1307674368000.0;
    p = p * x + 1.0 / 87178291200.0;
    p = p * x + 1.0 / 6227020800.0;
    p = p * x + 1.0 / 479001600.0;
    p = p * x + 1.0 / 39916800.0;
    p = p * x + 1.0 / 3628800.0;
    p = p * x + 1.0 / 362880.0;
    p = p * x + 1.0 / 40320.0;
    p = p * x + 1.0 / 5040.0;
    p = p * x + 1.0 / 720.0;
    p = p * x + 1.0 / 120.0;
    p = p * x + 1.0 / 24.0;
    p = p * x + 1.0 / 6.0;
    p = p * x + 0.5;
    return x * x * p;
}

// e^x − 1 − x: the series for |x| < 0.5, directly beyond (where it is ≥ 0.1 and
// e^x − 1 − x loses at most 3 bits).
fn exp_tail(x: real) -> real {
    if (abs(x) >= 0.5) {
        return exp_r(x) - 1.0 - x;
    }
    return exp_series_tail(x);
}

// e^x − 1 without cancellation (the builtin exp near 0 has no such accuracy). For
// |x| < 1e-4 four terms are exact (the next is below 1e-18 relative) — the CPU's series,
// and the Δ path's usual argument.
fn expm1_r(x: real) -> real {
    if (abs(x) < 1e-4) {
        return x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0))));
    }
    if (abs(x) >= 0.5) {
        return exp_r(x) - 1.0;
    }
    return x + exp_tail(x);
}

// q(s²) with atanh(s) = s + s³·q(s²) = s + s³/3 + s⁵/5 + …, series to s^37: for
// |s| ≤ 1/3 the remainder is < 1e-18 relative (f64's log_r uses it for |s| ≤ 0.172).
fn atanh_tail(s2: real) -> real {
    var q: real = 1.0 / 37.0;
    q = q * s2 + 1.0 / 35.0;
    q = q * s2 + 1.0 / 33.0;
    q = q * s2 + 1.0 / 31.0;
    q = q * s2 + 1.0 / 29.0;
    q = q * s2 + 1.0 / 27.0;
    q = q * s2 + 1.0 / 25.0;
    q = q * s2 + 1.0 / 23.0;
    q = q * s2 + 1.0 / 21.0;
    q = q * s2 + 1.0 / 19.0;
    q = q * s2 + 1.0 / 17.0;
    q = q * s2 + 1.0 / 15.0;
    q = q * s2 + 1.0 / 13.0;
    q = q * s2 + 1.0 / 11.0;
    q = q * s2 + 1.0 / 9.0;
    q = q * s2 + 1.0 / 7.0;
    q = q * s2 + 1.0 / 5.0;
    q = q * s2 + 1.0 / 3.0;
    return q;
}

// log(1 + x) − x for −0.5 < x < 0.5: with s = x/(2 + x), log(1 + x) = 2·atanh(s)
// (|s| ≤ 1/3), and 2s − x = −x²/(2 + x) exactly, so nothing cancels. Directly beyond.
fn log1p_tail(x: real) -> real {
    if (x <= -0.5 || x >= 0.5) {
        return log_r(1.0 + x) - x;
    }
    let s = x / (2.0 + x);
    let s2 = s * s;
    return 2.0 * s * s2 * atanh_tail(s2) - x * x / (2.0 + x);
}

// log(1 + x) without cancellation (|x| < 1e-4: the CPU's four terms, next below 2e-17).
fn log1p_r(x: real) -> real {
    if (abs(x) < 1e-4) {
        return x * (1.0 + x * (-0.5 + x * (1.0 / 3.0 + x * (-0.25))));
    }
    if (x <= -0.5 || x >= 0.5) {
        return log_r(1.0 + x);
    }
    return x + log1p_tail(x);
}

// σ(z) = 1/(1 + e^−z): relative accuracy for either sign (σ(−z) is not 1 − σ(z) here).
fn sigmoid_r(z: real) -> real {
    return 1.0 / (1.0 + exp_r(-z));
}

// 1 − |tanh z| = 2/(1 + e^{2|z|}), without cancellation.
fn tanh_complement(z: real) -> real {
    return 2.0 / (1.0 + exp_r(2.0 * abs(z)));
}

// tanh(d) accurate relative to itself for tiny d (the f32 builtin need not be).
fn tanh_small(d: real) -> real {
    if (abs(d) >= 0.5) {
        return tanh_r(d);
    }
    let e = expm1_r(2.0 * d);
    return e / (e + 2.0);
}

// The Δ path (`--precision f32`): g(z0 + dz) − g(z0) for activation `code` without
// subtracting two nearly equal rounded values, so the change keeps a relative accuracy of
// a few units of the precision however small dz is.
fn act_delta(code: u32, z0: real, dz: real) -> real {
    return act_delta_with(code, model[job.slope_idx], z0, dz);
}

fn act_delta_with(code: u32, slope: real, z0: real, dz: real) -> real {
    let z1 = z0 + dz;
    switch code {
        case 1u, 4u: {
            // Linear on each side of the kink; a crossing (flagged) is evaluated directly,
            // one side being exactly 0·slope.
            if (z0 > 0.0 && z1 > 0.0) {
                return dz;
            }
            if (z0 <= 0.0 && z1 <= 0.0) {
                return select(0.0, slope, code == 4u) * dz;
            }
            return act_with(code, slope, z1) - act_with(code, slope, z0);
        }
        case 2u: {
            // σ(z + d) − σ(z) = σ(z + d)·σ(−z)·(1 − e^−d).
            return sigmoid_r(z1) * sigmoid_r(-z0) * (-expm1_r(-dz));
        }
        case 3u: {
            // tanh a − tanh b = (1 − tanh a·tanh b)·tanh(a − b); on one side of 0 the
            // first factor is (1 − |tanh a|) + |tanh a|·(1 − |tanh b|).
            let t0 = tanh_r(z0);
            var c: real;
            if ((z0 >= 0.0) == (z1 >= 0.0)) {
                c = tanh_complement(z0) + abs(t0) * tanh_complement(z1);
            } else {
                c = 1.0 + abs(t0 * tanh_r(z1));
            }
            return c * tanh_small(dz);
        }
        default: {
            return dz;
        }
    }
}

// What a perturbed stage stores for element (i, j) with base pre-activation z0, perturbed
// z1 = z0 + dz: plain, the perturbed activation g(z1) (z1 itself for the output layer); on
// the Δ path the change g(z1) − g(z0) (dz for the output layer); times the dropout factor.
fn stage_value(z0: real, z1: real, dz: real, i: u32, j: u32) -> real {
    if (job.delta == 1u) {
        return select(act_delta(job.act, z0, dz), dz, job.is_output == 1u) * mask_at(i, j);
    }
    return select(act(job.act, z1), z1, job.is_output == 1u) * mask_at(i, j);
}

fn crosses(code: u32, z0: real, z1: real) -> bool {
    return (code == 1u || code == 4u) && ((z0 > 0.0) != (z1 > 0.0));
}

// The dropout factor D/keep_prob of element (i, j) of this stage's layer (1 without).
fn mask_at(i: u32, j: u32) -> real {
    return mask_of(job.mask_off, i, j);
}

// … of a layer whose factors start at model-buffer offset `off` (0: no dropout).
fn mask_of(off: u32, i: u32, j: u32) -> real {
    if (off == 0u) {
        return 1.0;
    }
    return model[off + i * job.m + j];
}

// Flags perturbation k when element (i, j) moved across a kink (a dropped unit's kink
// does not matter: its output is 0 either side): bit 0 for the +ε step, bit 1 for −ε, so
// that the host can fall back to the one-sided difference on the side that did not cross.
fn flag_kink(k: u32, z0: real, z1: real, i: u32, j: u32) {
    flag_kink_of(param_of(k), k % 2u == 0u, z0, z1, i, j);
}

fn flag_kink_of(p: u32, plus: bool, z0: real, z1: real, i: u32, j: u32) {
    if (crosses(job.act, z0, z1) && mask_at(i, j) != 0.0) {
        atomicOr(&kinks[p], select(2u, 1u, plus));
    }
}

// Linear thread index of a 1-D kernel dispatched as a 2-D grid of 64-wide workgroups
// (the grid is 2-D only to stay under 65 535 workgroups per dimension).
fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * 64u + lid.x;
}

// The parameter perturbed by batch column block k (through the chunk's parameter list:
// no index arithmetic beyond k/2), and its sign.
fn param_of(k: u32) -> u32 {
    return plist[job.first + k / 2u];
}

// Where perturbation k's results go: J± (or ΔJ±) at 2p, 2p + 1; the Δ path's magnitudes
// Σ|Δloss|/m at 2N + the same.
fn result_slot(p: u32, k: u32) -> u32 {
    return 2u * p + k % 2u;
}

fn sign_of(k: u32) -> real {
    return select(real(-1.0), real(1.0), k % 2u == 0u);
}
