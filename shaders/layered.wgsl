// Networks given as a sequence of layer types (conv2d, pooling, flatten, dense,
// activations): the GPU twin of the CPU's `eval::layered`. One thread per (perturbation,
// sample) — item = k·m + j of the chunk, k = 2·(p − first) + (0: +ε, 1: −ε) — so a thread's
// loops are one sample's work (a software adapter's loop cap is per invocation).
//
//   * `layered_delta` (Δ paths): the changed layer's output change in closed form (one output
//     channel of a conv weight, one unit of a dense one: the CPU's `param_delta`), carried
//     layer by layer by each type's sparse Δ form (the CPU's `delta_lanes`, one lane) in
//     per-thread scratch that only lists what changed, kinks and max-pool tie widths as the
//     CPU decides them; then the loss change (`sample_loss_delta`). Δloss to src[k·m + j],
//     the tie width to src[cols + k·m + j].
//   * `layered_plain` (plain paths): J's loss of the sample with θ_p ± ε, dense forward from
//     the perturbed layer on (the CPU's `perturbed_costs`, operation for operation).
//   * `layered_reduce`: one thread per perturbation sums its samples in sample order
//     (compensated on the Δ path) and writes ΔJ± and magnitudes (or J±).
//
// Buffers: model = header | slopes | θ | Y (n_out × m); base = X and every layer's output
// (sample-major, the CPU's f64 base pass rounded once) | max-pool ∂J/∂y | the output's Z and
// A (n_out × m) | BCE's σ(∓z); plist = the layer table (LW words per layer) then the tensor
// table (TW per tensor); dst = scratch, five regions of `widest` entries per thread,
// interleaved by thread (coalesced on a GPU): 0/1 values (current/next layer's change, all
// zero between uses), 2/3 the lists of changed entries, 4 marks.

const LW: u32 = 24u;
const TW: u32 = 4u;

// Layer kinds of the table (src/eval/gpu/layered.rs writes them).
const CONV: u32 = 1u;
const MAX_POOL: u32 = 2u;
const AVG_POOL: u32 = 3u;
const FLATTEN: u32 = 4u;
const DENSE: u32 = 5u;
const ACT: u32 = 6u;

var<private> tid_: u32;
// Which value region holds the current layer's change (0 or 1); its list is 2 + cur_.
var<private> cur_: u32;
// The plain path's perturbed parameter: model-buffer index and its value θ_p ± ε.
var<private> pert_at: u32;
var<private> pert_val: real;

fn lt(q: u32, f: u32) -> u32 {
    return plist[q * LW + f];
}

// Scratch entry e of region r of this thread.
fn sc(r: u32, e: u32) -> u32 {
    return (r * job.widest + e) * job.threads + tid_;
}

fn val(r: u32, e: u32) -> real {
    return dst[sc(r, e)];
}

fn list_at(r: u32, t: u32) -> u32 {
    return u32(dst[sc(2u + r, t)]);
}

fn list_put(r: u32, t: u32, e: u32) {
    dst[sc(2u + r, t)] = real(e);
}

fn mark(e: u32) -> real {
    return dst[sc(4u, e)];
}

fn set_mark(e: u32, v: real) {
    dst[sc(4u, e)] = v;
}

// Layer q's input for sample j, entry e (X for the first layer, else the layer before's
// output), and its output.
fn input_of(q: u32, j: u32, e: u32) -> real {
    return base[lt(q, 3u) + j * lt(q, 1u) + e];
}

fn output_of(q: u32, j: u32, e: u32) -> real {
    return base[lt(q, 4u) + j * lt(q, 2u) + e];
}

// A parameter of θ by model-buffer index, θ_p ± ε at the plain path's perturbed one.
fn param(at: u32) -> real {
    if (at == pert_at) {
        return pert_val;
    }
    return model[at];
}

// A thread's item of the chunk: perturbation k (2·(p − first) + 0 for +ε, 1 for −ε), sample j.
struct Item {
    k: u32,
    j: u32,
    p: u32,
}

fn item_of(tid: u32) -> Item {
    let item = job.item0 + tid;
    let k = item / job.m;
    return Item(k, item % job.m, job.first + k / 2u);
}

// The tensor holding flat parameter p: (layer, tensor of the layer, index in it, weight?).
struct Owner {
    layer: u32,
    tensor: u32,
    local: u32,
    is_w: bool,
}

fn owner_of(p: u32) -> Owner {
    var o: Owner;
    for (var t = 0u; t < job.n_tensors; t++) {
        let at = job.tensor_tab + t * TW;
        if (p >= plist[at] && p < plist[at] + plist[at + 1u]) {
            o.layer = plist[at + 2u];
            o.tensor = plist[at + 3u] & 255u;
            o.is_w = (plist[at + 3u] >> 8u) == 1u;
            o.local = p - plist[at];
        }
    }
    return o;
}

// Conv weight index of kernel row i, column jj, input channel ci, filter co (the CPU's widx).
fn conv_w(q: u32, i: u32, jj: u32, ci: u32, co: u32) -> u32 {
    let fh = lt(q, 12u);
    let fw = lt(q, 13u);
    let cin = lt(q, 10u);
    let cout = lt(q, 11u);
    if (lt(q, 19u) == 0u) {
        return ((i * fw + jj) * cin + ci) * cout + co;
    }
    return ((co * cin + ci) * fh + i) * fw + jj;
}

// The input position (y·W + x) a conv window at output (oy, ox) reads at kernel offset
// (i, jj), or 0xffffffff in the padding.
fn conv_input_at(q: u32, oy: u32, ox: u32, i: u32, jj: u32) -> u32 {
    let s = lt(q, 14u);
    let yy = oy * s + i;
    let xx = ox * s + jj;
    if (yy < lt(q, 15u) || xx < lt(q, 16u)) {
        return 0xffffffffu;
    }
    let y = yy - lt(q, 15u);
    let x = xx - lt(q, 16u);
    if (y >= lt(q, 8u) || x >= lt(q, 9u)) {
        return 0xffffffffu;
    }
    return y * lt(q, 9u) + x;
}

// (i, jj, ci, co) of a conv weight's flat index (the CPU's unravel).
fn conv_unravel(q: u32, k: u32) -> vec4<u32> {
    let fh = lt(q, 12u);
    let fw = lt(q, 13u);
    let cin = lt(q, 10u);
    let cout = lt(q, 11u);
    if (lt(q, 19u) == 0u) {
        let r = k / cout;
        return vec4<u32>((r / cin) / fw, (r / cin) % fw, r % cin, k % cout);
    }
    let r = k / fw;
    return vec4<u32>(r % fh, k % fw, (r / fh) % cin, (r / fh) / cin);
}

// Dense weight index of input i, output o (the CPU's Dense::w).
fn dense_w(q: u32, i: u32, o: u32) -> u32 {
    if (lt(q, 11u) == 0u) {
        return i * lt(q, 9u) + o;
    }
    return o * lt(q, 8u) + i;
}

// Output index of channels-last entry e through flatten (PyTorch's order: (c, h, w)).
fn flat_to(q: u32, e: u32) -> u32 {
    if (lt(q, 10u) == 0u) {
        return e;
    }
    let c = lt(q, 9u);
    return (e % c) * lt(q, 8u) + e / c;
}

// Pool window entries: the input index of window output e's entry (i, jj).
fn pool_entry(q: u32, e: u32, i: u32, jj: u32) -> u32 {
    let c = lt(q, 10u);
    let pos = e / c;
    let ch = e % c;
    let oy = pos / lt(q, 15u);
    let ox = pos % lt(q, 15u);
    return ((oy * lt(q, 13u) + i) * lt(q, 9u) + ox * lt(q, 13u) + jj) * c + ch;
}

// ---- Δ path ------------------------------------------------------------------------

// The perturbed layer's output change for parameter `o` moved by d, into the current
// region; returns how many entries it lists (the CPU's param_delta).
fn param_delta(o: Owner, d: real, j: u32) -> u32 {
    let q = o.layer;
    var n = 0u;
    if (lt(q, 0u) == DENSE) {
        var out = o.local;
        var v = d;
        if (o.tensor == 0u) {
            var i: u32;
            if (lt(q, 11u) == 0u) {
                i = o.local / lt(q, 9u);
                out = o.local % lt(q, 9u);
            } else {
                i = o.local % lt(q, 8u);
                out = o.local / lt(q, 8u);
            }
            v = d * input_of(q, j, i);
        }
        dst[sc(cur_, out)] = v;
        list_put(cur_, 0u, out);
        return 1u;
    }
    // conv2d
    let oh = lt(q, 17u);
    let ow = lt(q, 18u);
    let cout = lt(q, 11u);
    let cin = lt(q, 10u);
    if (o.tensor == 1u) {
        for (var pos = 0u; pos < oh * ow; pos++) {
            let e = pos * cout + o.local;
            dst[sc(cur_, e)] = d;
            list_put(cur_, n, e);
            n++;
        }
        return n;
    }
    let u = conv_unravel(q, o.local);
    let i = u.x;
    let jj = u.y;
    let ci = u.z;
    let co = u.w;
    for (var oy = 0u; oy < oh; oy++) {
        for (var ox = 0u; ox < ow; ox++) {
            let at = conv_input_at(q, oy, ox, i, jj);
            if (at != 0xffffffffu) {
                let e = (oy * ow + ox) * cout + co;
                dst[sc(cur_, e)] = d * input_of(q, j, at * cin + ci);
                list_put(cur_, n, e);
                n++;
            }
        }
    }
    return n;
}

// What a layer's Δ form reports besides its output change.
struct Side {
    crossed: bool,
    spread: real,
}

// Layer q's change from the current region's n listed entries into the next region;
// clears the current entries; returns how many the next lists.
fn layer_delta(q: u32, j: u32, n: u32, side: ptr<function, Side>) -> u32 {
    let nx = 1u - cur_;
    var out = 0u;
    switch lt(q, 0u) {
        case 1u: { out = conv_delta(q, n, nx); }
        case 2u: { out = max_pool_delta(q, j, n, nx, side); }
        case 3u: { out = avg_pool_delta(q, n, nx); }
        case 4u: {
            for (var t = 0u; t < n; t++) {
                let e = list_at(cur_, t);
                let to = flat_to(q, e);
                dst[sc(nx, to)] = val(cur_, e);
                list_put(nx, t, to);
            }
            out = n;
        }
        case 5u: { out = dense_delta(q, n, nx); }
        default: { out = act_layer_delta(q, j, n, nx, side); }
    }
    for (var t = 0u; t < n; t++) {
        dst[sc(cur_, list_at(cur_, t))] = 0.0;
    }
    cur_ = nx;
    return out;
}

// Linear: each changed input entry scattered to the outputs whose windows read it — first
// the positions reached (marked once each, in the order met), then the sums, then the
// list expanded to every filter of those positions (the CPU's order).
fn conv_delta(q: u32, n: u32, nx: u32) -> u32 {
    let w = lt(q, 9u);
    let cin = lt(q, 10u);
    let cout = lt(q, 11u);
    let fh = lt(q, 12u);
    let fw = lt(q, 13u);
    let s = lt(q, 14u);
    let oh = lt(q, 17u);
    let ow = lt(q, 18u);
    let pt = lt(q, 15u);
    let pl = lt(q, 16u);
    let w_off = lt(q, 5u);
    var positions = 0u;
    for (var sweep = 0u; sweep < 2u; sweep++) {
        for (var t = 0u; t < n; t++) {
            let k = list_at(cur_, t);
            let d = val(cur_, k);
            if (d == 0.0) {
                continue;
            }
            let at = k / cin;
            let ci = k % cin;
            let iy = at / w + pt;
            let ix = at % w + pl;
            for (var i = 0u; i < min(fh, iy + 1u); i++) {
                let oy = iy - i;
                if (oy % s != 0u || oy / s >= oh) {
                    continue;
                }
                for (var jj = 0u; jj < min(fw, ix + 1u); jj++) {
                    let ox = ix - jj;
                    if (ox % s != 0u || ox / s >= ow) {
                        continue;
                    }
                    let pos = (oy / s) * ow + ox / s;
                    if (sweep == 0u) {
                        if (mark(pos) == 0.0) {
                            set_mark(pos, 1.0);
                            list_put(nx, positions, pos);
                            positions++;
                        }
                        continue;
                    }
                    for (var co = 0u; co < cout; co++) {
                        let e = pos * cout + co;
                        dst[sc(nx, e)] += model[w_off + conv_w(q, i, jj, ci, co)] * d;
                    }
                }
            }
        }
    }
    for (var t = 0u; t < positions; t++) {
        let pos = list_at(nx, t);
        set_mark(pos, 0.0);
        list_put(nx, t, pos * cout);
        for (var co = 1u; co < cout; co++) {
            list_put(nx, positions + t * (cout - 1u) + co - 1u, pos * cout + co);
        }
    }
    return positions * cout;
}

// The pool windows reading input position `pos` (y·W + x): oy0..=oy1 × ox0..=ox1 as (x, y,
// z, w) — windows o with o·s ≤ v < o·s + f (the CPU's reach table).
fn reach(q: u32, pos: u32) -> vec4<u32> {
    let w = lt(q, 9u);
    let fh = lt(q, 11u);
    let fw = lt(q, 12u);
    let s = lt(q, 13u);
    let y = pos / w;
    let x = pos % w;
    return vec4<u32>(
        (max(y + 1u, fh) - fh + s - 1u) / s,
        min(y / s, lt(q, 14u) - 1u),
        (max(x + 1u, fw) - fw + s - 1u) / s,
        min(x / s, lt(q, 15u) - 1u),
    );
}

// The pool outputs whose windows read a changed entry, marked `1` once each, listed in
// the order met.
fn pool_touched(q: u32, n: u32, nx: u32) -> u32 {
    let c = lt(q, 10u);
    let ow = lt(q, 15u);
    var out = 0u;
    for (var t = 0u; t < n; t++) {
        let k = list_at(cur_, t);
        if (val(cur_, k) == 0.0) {
            continue;
        }
        let ch = k % c;
        let r = reach(q, k / c);
        for (var oy = r.x; oy <= r.y; oy++) {
            for (var ox = r.z; ox <= r.w; ox++) {
                let e = (oy * ow + ox) * c + ch;
                if (mark(e) == 0.0) {
                    set_mark(e, 1.0);
                    list_put(nx, out, e);
                    out++;
                }
            }
        }
    }
    return out;
}

fn avg_pool_delta(q: u32, n: u32, nx: u32) -> u32 {
    let out = pool_touched(q, n, nx);
    let fh = lt(q, 11u);
    let fw = lt(q, 12u);
    let size = real(fh * fw);
    for (var t = 0u; t < out; t++) {
        let e = list_at(nx, t);
        set_mark(e, 0.0);
        var s: real = 0.0;
        for (var i = 0u; i < fh; i++) {
            for (var jj = 0u; jj < fw; jj++) {
                s += val(cur_, pool_entry(q, e, i, jj));
            }
        }
        dst[sc(nx, e)] = s / size;
    }
    return out;
}

// max_k(x_k + dx_k) − x* = max_k((x_k − x*) + dx_k): a window whose maxima did not change
// gets max(0, its best changed entry's term) (a positive one crossed a kink); a window
// where a maximum changed (marked 2) is redone whole, its tied maxima's spread of dx times
// |∂J/∂y| being the tie width (the CPU's MaxPool::delta_lanes, one lane).
fn max_pool_delta(q: u32, j: u32, n: u32, nx: u32, side: ptr<function, Side>) -> u32 {
    let out = pool_touched(q, n, nx);
    let c = lt(q, 10u);
    let fh = lt(q, 11u);
    let fw = lt(q, 12u);
    let ow = lt(q, 15u);
    for (var t = 0u; t < n; t++) {
        let k = list_at(cur_, t);
        let d = val(cur_, k);
        if (d == 0.0) {
            continue;
        }
        let ch = k % c;
        let r = reach(q, k / c);
        let xk = input_of(q, j, k);
        for (var oy = r.x; oy <= r.y; oy++) {
            for (var ox = r.z; ox <= r.w; ox++) {
                let e = (oy * ow + ox) * c + ch;
                let top = output_of(q, j, e);
                if (xk == top) {
                    set_mark(e, 2.0);
                } else {
                    dst[sc(nx, e)] = max(val(nx, e), (xk - top) + d);
                }
            }
        }
    }
    let grad_off = lt(q, 7u);
    for (var t = 0u; t < out; t++) {
        let e = list_at(nx, t);
        if (mark(e) != 2.0) {
            (*side).crossed = (*side).crossed || val(nx, e) > 0.0;
            set_mark(e, 0.0);
            continue;
        }
        set_mark(e, 0.0);
        let top = output_of(q, j, e);
        var tied: real = 0.0;
        var lo: real = 0.0;
        var others: real = 0.0;
        var n_tied = 0u;
        var has_others = false;
        for (var i = 0u; i < fh; i++) {
            for (var jj = 0u; jj < fw; jj++) {
                let k = pool_entry(q, e, i, jj);
                let dk = val(cur_, k);
                let xk = input_of(q, j, k);
                if (xk == top) {
                    if (n_tied == 0u) {
                        tied = dk;
                        lo = dk;
                    } else {
                        tied = max(tied, dk);
                        lo = min(lo, dk);
                    }
                    n_tied++;
                } else {
                    let v = (xk - top) + dk;
                    others = select(v, max(others, v), has_others);
                    has_others = true;
                }
            }
        }
        if (has_others && others > tied) {
            (*side).crossed = true;
            dst[sc(nx, e)] = others;
        } else {
            dst[sc(nx, e)] = tied;
        }
        if (grad_off != 0u && n_tied > 1u && tied > lo) {
            (*side).spread += abs(base[grad_off + j * lt(q, 2u) + e]) * (tied - lo);
        }
    }
    return out;
}

fn dense_delta(q: u32, n: u32, nx: u32) -> u32 {
    let n_out = lt(q, 9u);
    let w_off = lt(q, 5u);
    for (var t = 0u; t < n; t++) {
        let i = list_at(cur_, t);
        let d = val(cur_, i);
        if (d == 0.0) {
            continue;
        }
        for (var o = 0u; o < n_out; o++) {
            dst[sc(nx, o)] += model[w_off + dense_w(q, i, o)] * d;
        }
    }
    for (var o = 0u; o < n_out; o++) {
        list_put(nx, o, o);
    }
    return n_out;
}

// g(z + dz) − g(z) of each changed entry (closed forms); an entry that stays 0 (an
// inactive ReLU unit) leaves the list.
fn act_layer_delta(q: u32, j: u32, n: u32, nx: u32, side: ptr<function, Side>) -> u32 {
    let code = lt(q, 8u);
    let slope = model[lt(q, 9u)];
    let kinky = code == 1u || code == 4u;
    var out = 0u;
    for (var t = 0u; t < n; t++) {
        let k = list_at(cur_, t);
        let d = val(cur_, k);
        if (d == 0.0) {
            continue;
        }
        let z = input_of(q, j, k);
        let v = act_delta_with(code, slope, z, d);
        if (kinky && ((z > 0.0) != (z + d > 0.0))) {
            (*side).crossed = true;
        }
        if (v != 0.0) {
            dst[sc(nx, k)] = v;
            list_put(nx, out, k);
            out++;
        }
    }
    return out;
}

@compute @workgroup_size(64)
fn layered_delta(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    tid_ = linear_id(wid, nwg, lid);
    if (tid_ >= job.total) {
        return;
    }
    let m = job.m;
    let it = item_of(tid_);
    let k = it.k;
    let j = it.j;
    let p = it.p;
    let plus = k % 2u == 0u;
    let d = sign_of(k) * model[0];
    let o = owner_of(p);
    cur_ = 0u;
    var n = param_delta(o, d, j);
    var side: Side;
    for (var q = o.layer + 1u; q < job.n_layers; q++) {
        n = layer_delta(q, j, n, &side);
    }
    // The output's kink (a ReLU output) and the loss change from its Δz (region cur_,
    // dense: every entry not listed is 0).
    if (job.out_act == 1u || job.out_act == 4u) {
        for (var c = 0u; c < job.n_out; c++) {
            let z0 = base[job.out_z + c * m + j];
            if ((z0 > 0.0) != (z0 + val(cur_, c) > 0.0)) {
                side.crossed = true;
            }
        }
    }
    fz_mode = 3u;
    let dl = sample_loss_delta(j, 0u);
    for (var t = 0u; t < n; t++) {
        dst[sc(cur_, list_at(cur_, t))] = 0.0;
    }
    src[k * m + j] = dl;
    src[job.cols + k * m + j] = side.spread;
    if (side.crossed) {
        atomicOr(&kinks[p], select(2u, 1u, plus));
    }
}

// The output's Δz for `sample_loss_delta` (mode 3): the current region.
fn fused_dz(c: u32) -> real {
    return val(cur_, c);
}

// ---- plain path --------------------------------------------------------------------

// Layer q forward on one sample: input from `x_reg` (a region, or 0xffffffff: the base
// pass's input of layer q) into region `y_reg`, the CPU's loops in the CPU's order.
fn in_val(q: u32, j: u32, x_reg: u32, e: u32) -> real {
    if (x_reg == 0xffffffffu) {
        return input_of(q, j, e);
    }
    return val(x_reg, e);
}

// `only` (the perturbed layer): the one output channel (conv) or unit (dense) the perturbed
// parameter reaches is computed, the others are the base pass's (the same operations
// would give the same values); 0xffffffff: every output.
fn layer_forward(q: u32, j: u32, x_reg: u32, y_reg: u32, only: u32) {
    switch lt(q, 0u) {
        case 1u: {
            let cin = lt(q, 10u);
            let cout = lt(q, 11u);
            let fh = lt(q, 12u);
            let fw = lt(q, 13u);
            let oh = lt(q, 17u);
            let ow = lt(q, 18u);
            let w_off = lt(q, 5u);
            let b_off = lt(q, 6u);
            for (var pos = 0u; pos < oh * ow; pos++) {
                let oy = pos / ow;
                let ox = pos % ow;
                for (var co = 0u; co < cout; co++) {
                    if (only != 0xffffffffu && co != only) {
                        dst[sc(y_reg, pos * cout + co)] = output_of(q, j, pos * cout + co);
                        continue;
                    }
                    var acc = param(b_off + co);
                    for (var i = 0u; i < fh; i++) {
                        for (var jj = 0u; jj < fw; jj++) {
                            let at = conv_input_at(q, oy, ox, i, jj);
                            if (at == 0xffffffffu) {
                                continue;
                            }
                            for (var ci = 0u; ci < cin; ci++) {
                                acc = fma(param(w_off + conv_w(q, i, jj, ci, co)), in_val(q, j, x_reg, at * cin + ci), acc);
                            }
                        }
                    }
                    dst[sc(y_reg, pos * cout + co)] = acc;
                }
            }
        }
        case 2u, 3u: {
            let fh = lt(q, 11u);
            let fw = lt(q, 12u);
            for (var e = 0u; e < lt(q, 2u); e++) {
                var best: real = 0.0;
                var s: real = 0.0;
                for (var i = 0u; i < fh; i++) {
                    for (var jj = 0u; jj < fw; jj++) {
                        let v = in_val(q, j, x_reg, pool_entry(q, e, i, jj));
                        if ((i == 0u && jj == 0u) || v > best) {
                            best = v;
                        }
                        s += v;
                    }
                }
                dst[sc(y_reg, e)] = select(s / real(fh * fw), best, lt(q, 0u) == MAX_POOL);
            }
        }
        case 4u: {
            for (var e = 0u; e < lt(q, 1u); e++) {
                dst[sc(y_reg, flat_to(q, e))] = in_val(q, j, x_reg, e);
            }
        }
        case 5u: {
            let n_in = lt(q, 8u);
            let n_out = lt(q, 9u);
            let w_off = lt(q, 5u);
            let b_off = lt(q, 6u);
            for (var o = 0u; o < n_out; o++) {
                if (only != 0xffffffffu && o != only) {
                    dst[sc(y_reg, o)] = output_of(q, j, o);
                    continue;
                }
                var s: real = 0.0;
                for (var i = 0u; i < n_in; i++) {
                    s = fma(param(w_off + dense_w(q, i, o)), in_val(q, j, x_reg, i), s);
                }
                if (lt(q, 10u) == 1u) {
                    s = s + param(b_off + o);
                }
                dst[sc(y_reg, o)] = s;
            }
        }
        default: {
            let code = lt(q, 8u);
            let slope = model[lt(q, 9u)];
            for (var e = 0u; e < lt(q, 1u); e++) {
                dst[sc(y_reg, e)] = act_with(code, slope, in_val(q, j, x_reg, e));
            }
        }
    }
}

// The loss of one sample from the output in region r (the CPU's `math::sample_loss`).
fn plain_loss(r: u32, j: u32) -> real {
    cur_ = r;
    fz_mode = 3u;
    return sample_loss_plain(j, 0u);
}

@compute @workgroup_size(64)
fn layered_plain(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    tid_ = linear_id(wid, nwg, lid);
    if (tid_ >= job.total) {
        return;
    }
    let m = job.m;
    let it = item_of(tid_);
    let k = it.k;
    let j = it.j;
    let p = it.p;
    let o = owner_of(p);
    pert_at = job.theta_off + p;
    pert_val = model[pert_at] + sign_of(k) * model[0];
    // The output channel (conv) or unit (dense) the parameter reaches.
    var only = o.local;
    if (o.tensor == 0u && lt(o.layer, 0u) == CONV) {
        only = conv_unravel(o.layer, o.local).w;
    } else if (o.tensor == 0u) {
        if (lt(o.layer, 11u) == 0u) {
            only = o.local % lt(o.layer, 9u);
        } else {
            only = o.local / lt(o.layer, 8u);
        }
    }
    layer_forward(o.layer, j, 0xffffffffu, 0u, only);
    var r = 0u;
    for (var q = o.layer + 1u; q < job.n_layers; q++) {
        layer_forward(q, j, r, 1u - r, 0xffffffffu);
        r = 1u - r;
    }
    src[k * m + j] = plain_loss(r, j);
}

// ---- the sums ----------------------------------------------------------------------

// One thread per perturbation k of the chunk, over the samples [j_begin, j_end) (windows
// on a software adapter's loop cap, continuing the running sums in `results`). Δ path:
// ΔJ = Σ Δloss/m (Neumaier, sample order) + ΔL2, magnitudes, and the tie widths summed at
// 6N + slot. Plain: J = (1/m)·Σ loss + (λ/(2m))·(Σ‖W‖² − θ² + θ'²), in sample order.
@compute @workgroup_size(64)
fn layered_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let k = linear_id(wid, nwg, lid);
    if (k >= job.total) {
        return;
    }
    let m = job.m;
    let p = job.first + k / 2u;
    let slot = 2u * p + k % 2u;
    let o = owner_of(p);
    if (job.delta == 1u) {
        let run = window_start(slot);
        var s = run.s;
        var comp = run.comp;
        var mag = run.mag;
        var tie: real = 0.0;
        if (job.j_begin > 0u) {
            tie = results[6u * job.n_params + slot];
        }
        for (var j = job.j_begin; j < job.j_end; j++) {
            let v = src[k * m + j];
            add_compensated(&s, &comp, v);
            mag += abs(v);
            tie += src[job.cols + k * m + j];
        }
        results[6u * job.n_params + slot] = tie;
        var st: Step;
        st.p = p;
        st.plus = k % 2u == 0u;
        st.is_w = o.is_w;
        st.d = sign_of(k) * model[0];
        window_end(slot, st, Running(s, comp, mag));
        return;
    }
    var s: real = 0.0;
    if (job.j_begin > 0u) {
        s = results[slot];
    }
    for (var j = job.j_begin; j < job.j_end; j++) {
        s += src[k * m + j];
    }
    if (job.j_end < m) {
        results[slot] = s;
        return;
    }
    var cost = (1.0 / real(m)) * s;
    if (job.l2 == 1u) {
        var sumsq = model[2];
        if (o.is_w) {
            let th = model[job.theta_off + p];
            let moved = th + sign_of(k) * model[0];
            sumsq = sumsq - th * th + moved * moved;
        }
        cost += model[1] * sumsq;
    }
    results[slot] = cost;
}
