// What the Δ path's kernels share: the per-sample loss change (the staged `sample_loss`
// and the fused kernels), the compensated sum, the fused kernels' step and interval test. The output's Δz come from `out_dz`: the staged path's batch column, or the fused
// kernels' closed form for their one perturbation (set in these private variables).
var<private> fz_mode: u32; // 0: src column `col`; 1: e_r·t (output-layer parameter); 2: v·t;
                           // 3: the layer-by-layer vector (fused_exact's scratch)
var<private> fz_t: real;   // t: Δz of row r (mode 1), the activation change ΔA_l[r, j] (mode 2)
var<private> fz_at: u32;   // mode 1: r; mode 2: base offset of v_{r,j}; mode 3: scratch offset

fn out_dz(c: u32, col: u32) -> real {
    switch fz_mode {
        case 1u: { return select(0.0, fz_t, c == fz_at); }
        case 2u, 3u: { return fused_dz(c); }
        default: { return src[c * job.cols + col]; }
    }
}

// The loss of sample j from the output pre-activations z (`out_dz` of the plain kernels:
// the staged path's batch column, the layered kernels' scratch), the notebook's
// expressions in the CPU's order (`math::sample_loss`).
fn sample_loss_plain(j: u32, col: u32) -> real {
    let m = job.m;
    let n = job.n_out;
    let slope = model[job.out_slope];
    var s: real = 0.0;
    switch job.loss {
        case 0u: {
            // Binary cross-entropy, the notebook's expression.
            for (var i = 0u; i < n; i++) {
                let a = act_with(job.out_act, slope, out_dz(i, col));
                let y = model[job.y_off + i * m + j];
                s += (-log_r(a)) * y + (-log_r(1.0 - a)) * (1.0 - y);
            }
        }
        case 1u: {
            // Softmax cross-entropy through log-sum-exp.
            var mx = out_dz(0u, col);
            for (var i = 1u; i < n; i++) {
                mx = max(mx, out_dz(i, col));
            }
            var se: real = 0.0;
            for (var i = 0u; i < n; i++) {
                se += exp_r(out_dz(i, col) - mx);
            }
            let lse = mx + log_r(se);
            for (var i = 0u; i < n; i++) {
                s += model[job.y_off + i * m + j] * (lse - out_dz(i, col));
            }
        }
        default: {
            // Mean squared error with the ½.
            for (var i = 0u; i < n; i++) {
                let d = act_with(job.out_act, slope, out_dz(i, col)) - model[job.y_off + i * m + j];
                s += 0.5 * d * d;
            }
        }
    }
    return s;
}

// loss(z0 + Δz) − loss(z0) of sample j, from the output's base pre-activations z0 (base
// buffer) and their changes Δz (`out_dz`), through closed forms that never subtract two
// nearly equal rounded numbers (the CPU's `loss_delta`, term for term).
fn sample_loss_delta(j: u32, col: u32) -> real {
    let m = job.m;
    let n = job.n_out;
    var s: real = 0.0;
    switch job.loss {
        case 0u: {
            // BCE on σ: −log σ(z) = softplus(−z), −log(1 − σ(z)) = softplus(z), and
            // softplus(u + d) − softplus(u) = log1p(σ(u)·expm1(d)); σ(∓z0) from the host's
            // table; a label of exactly 0 or 1 leaves one term.
            for (var i = 0u; i < n; i++) {
                let dz = out_dz(i, col);
                let y = model[job.y_off + i * m + j];
                if (y != 0.0) {
                    s += y * log1p_r(base[job.sig_off + i * m + j] * expm1_r(-dz));
                }
                if (y != 1.0) {
                    s += (1.0 - y) * log1p_r(base[job.sig_off + (n + i) * m + j] * expm1_r(dz));
                }
            }
        }
        case 1u: {
            // Softmax CE, loss = Y·lse(z) − Σ y_c·z_c with Y = Σ y_c. With p = softmax(z0)
            // and S = Σ p_c·expm1(Δz_c): Δlse = log1p(S) = Σ p_c·Δz_c + Q + (log1p(S) − S),
            // Q = Σ p_c·(e^Δz_c − 1 − Δz_c), so Δloss = Σ (Y·p_c − y_c)·Δz_c + Y·(Q + log1p_tail(S)).
            // Y·p_c − y_c = ((Y − y_c)·e_c − y_c·(se − e_c))/se, where the "others" sums
            // are summed afresh when one term dominates (exact zeros for one-hot y).
            var mx = base[job.out_z + j];
            for (var i = 1u; i < n; i++) {
                mx = max(mx, base[job.out_z + i * m + j]);
            }
            var se: real = 0.0;
            var yy: real = 0.0;
            for (var i = 0u; i < n; i++) {
                se += exp_r(base[job.out_z + i * m + j] - mx);
                yy += model[job.y_off + i * m + j];
            }
            var lin: real = 0.0;
            var sm: real = 0.0;
            var q: real = 0.0;
            for (var c = 0u; c < n; c++) {
                let ec = exp_r(base[job.out_z + c * m + j] - mx);
                let yc = model[job.y_off + c * m + j];
                var other_e = se - ec;
                var other_y = yy - yc;
                if (2.0 * ec > se || 2.0 * yc > yy) {
                    other_e = 0.0;
                    other_y = 0.0;
                    for (var d = 0u; d < n; d++) {
                        if (d != c) {
                            other_e += exp_r(base[job.out_z + d * m + j] - mx);
                            other_y += model[job.y_off + d * m + j];
                        }
                    }
                }
                let dz = out_dz(c, col);
                lin += (other_y * ec - yc * other_e) / se * dz;
                let pc = ec / se;
                sm += pc * expm1_r(dz);
                q += pc * exp_tail(dz);
            }
            s = lin + yy * (q + log1p_tail(sm));
        }
        default: {
            // MSE with ½: ½(a + Δa − y)² − ½(a − y)² = Δa·((a − y) + Δa/2).
            for (var i = 0u; i < n; i++) {
                let da = act_delta_with(job.out_act, model[job.out_slope], base[job.out_z + i * m + j], out_dz(i, col));
                let r = base[job.out_a + i * m + j] - model[job.y_off + i * m + j];
                s += da * (r + 0.5 * da);
            }
        }
    }
    return s;
}

// The Δ path's result of one perturbation (step d of parameter p): ΔJ = Σ/m + ΔL2 of a
// weight, and the magnitude Σ|Δloss|/m + |ΔL2|, to the results.
fn finish_delta(slot: u32, p: u32, is_w: bool, d: real, sum: real, abs_sum: real) {
    var dj = sum / real(job.m);
    var mag = abs_sum / real(job.m);
    if (job.l2 == 1u && is_w) {
        let dl2 = model[1] * d * (2.0 * model[job.theta_off + p] + d);
        dj += dl2;
        mag += abs(dl2);
    }
    results[slot] = dj;
    results[2u * job.n_params + slot] = mag;
}

// A fused kernel's running sums for one perturbation. An adapter that caps the loop
// iterations of one invocation (Mesa's llvmpipe: 65,535 over all loops, then every loop
// silently exits) gets the samples in windows [job.j_begin, job.j_end), one dispatch each;
// each window continues the compensated sum where the last one stopped (kept in results: the
// sum at slot, the magnitude at 2N + slot, the carry at 4N + slot), so the sum and its
// order are exactly those of one pass.
struct Running {
    s: real,
    comp: real,
    mag: real,
}

fn window_start(slot: u32) -> Running {
    var r: Running;
    if (job.j_begin > 0u) {
        r.s = results[slot];
        r.mag = results[2u * job.n_params + slot];
        r.comp = results[4u * job.n_params + slot];
    }
    return r;
}

// After the window: keep the running sums, or after the last one write ΔJ and magnitude.
fn window_end(slot: u32, st: Step, r: Running) {
    if (job.j_end < job.m) {
        results[slot] = r.s;
        results[2u * job.n_params + slot] = r.mag;
        results[4u * job.n_params + slot] = r.comp;
        return;
    }
    finish_delta(slot, st.p, st.is_w, st.d, r.s + r.comp, r.mag);
}

// Neumaier's compensated sum: adds v to (*sum, *carry); the value is *sum + *carry.
fn add_compensated(sum: ptr<function, real>, carry: ptr<function, real>, v: real) {
    let t = *sum + v;
    if (abs(*sum) >= abs(v)) {
        *carry += (*sum - t) + v;
    } else {
        *carry += (v - t) + *sum;
    }
    *sum = t;
}

// Perturbation k of a fused kernel: parameter p = first + k/2 of layer l (no table),
// decoded once per thread into its changed row r and, for a weight, input row c.
struct Step {
    p: u32,
    plus: bool,
    is_w: bool,
    r: u32,
    c: u32,
    d: real,  // ±ε
}

fn fused_step(k: u32) -> Step {
    var st: Step;
    st.p = job.first + k / 2u;
    st.plus = k % 2u == 0u;
    let local = st.p - job.w_param;
    let nw = job.rows_l * job.cols_l;
    st.is_w = local < nw;
    st.r = local - nw;
    st.c = 0u;
    if (st.is_w) {
        st.r = local / job.cols_l;
        st.c = local % job.cols_l;
    }
    st.d = sign_of(k) * model[0];
    return st;
}

// ΔZ_l[r, j] of the step: ±ε·input[c, j] for a weight (X or the previous A), ±ε for a bias.
fn step_dz(st: Step, j: u32) -> real {
    if (!st.is_w) {
        return st.d;
    }
    let at = job.in_off + st.c * job.m + j;
    if (job.in_is_x == 1u) {
        return st.d * model[at];
    }
    return st.d * base[at];
}

// Whether t = ΔA_l[r, j] lies inside the shortcut's kink-free interval of (r, j), by the
// relative margin in the header (model[3]).
fn inside_shortcut(at: u32, t: real) -> bool {
    let margin = model[3];
    let lo = base[job.sc_lo + at];
    let hi = base[job.sc_hi + at];
    return t > lo + margin * abs(lo) && t < hi - margin * abs(hi);
}

// The fused kernels' layer table, bound where the staged kernels bind their parameter
// list: per layer q, LAYER_INFO u32s — W offset, in and out widths, Z offset, activation,
// slope index, dropout offset, base-pass tables' offset (tanh, sigmoid; 0: none).
const LAYER_INFO: u32 = 8u;

// ΔA of unit i, sample j of layer q for a change dz of its pre-activation z0: through the
// base-pass tables where the layer has them (tanh, sigmoid), the closed forms otherwise.
fn layer_act_delta(q: u32, i: u32, j: u32, z0: real, dz: real) -> real {
    let info = q * LAYER_INFO;
    let tab = plist[info + 7u];
    let code = plist[info + 4u];
    if (tab != 0u && code == 3u) {
        return tanh_delta(tab, plist[info + 2u], i, j, z0, dz);
    }
    if (tab != 0u && code == 2u && abs(dz) < 1e-4) {
        // σ(z1) = s0/(1 + n0·expm1(−dz)) with s0 = σ(z0), n0 = σ(−z0): the closed form's
        // σ(z1)·σ(−z0)·(1 − e^−dz) with no exp for a small step (the CPU's sigmoid_delta;
        // a large step could overflow expm1: the closed form then).
        let at = i * job.m + j;
        let s0 = base[tab + at];
        let n0 = base[tab + plist[info + 2u] * job.m + at];
        let e = expm1_r(-dz);
        return s0 / (1.0 + n0 * e) * n0 * (-e);
    }
    return act_delta_with(code, model[plist[info + 5u]], z0, dz);
}

// tanh(z0 + dz) − tanh(z0) from the base pass's t0 = tanh z0 and c0 = 1 − |t0| (tables at
// `tab`, t0 then c0, n units × m): on one side of 0 and for |dz| < 1e-4,
// 1 − |tanh z1| = c0/(1 + (1 − c0/2)·expm1(2·dz·sgn z0)) exactly — no transcendental, no
// cancellation — and tanh dz its short series (the CPU's `tanh_delta`).
fn tanh_delta(tab: u32, n: u32, i: u32, j: u32, z0: real, dz: real) -> real {
    let z1 = z0 + dz;
    if (abs(dz) >= 1e-4 || (z0 >= 0.0) != (z1 >= 0.0)) {
        return act_delta_with(3u, 0.0, z0, dz);
    }
    let at = i * job.m + j;
    let t0 = base[tab + at];
    let c0 = base[tab + n * job.m + at];
    let s = select(-dz, dz, z0 >= 0.0);
    let c1 = c0 / (1.0 + (1.0 - 0.5 * c0) * expm1_r(2.0 * s));
    return (c0 + abs(t0) * c1) * (dz * (1.0 - dz * dz / 3.0));
}
