// The fused Δ path, layer by layer: each sample goes from t = ΔA_l[r, j] through two
// scratch vectors of its thread (in the `dst` binding, scratch_w wide each) to the
// output — no batch is written — and its loss change joins the compensated sum. A fixed
// grid of job.threads threads strides over the work (a private array per thread would
// cost every thread its zero-initialisation; the scratch is sized by the host). Two uses
// (job.cols as the flag):
//   * cols = 0: a layer without a shortcut: every perturbation, every sample, from an
//     empty sum;
//   * cols = 1: after `fused_delta`, the perturbations on its work list, every sample:
//     by the shortcut (v·t) where t lies inside its interval, layer by layer where not.
//     Each of these perturbations is decided by this kernel alone, sample by sample.
@compute @workgroup_size(64)
fn fused_exact(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = linear_id(wid, nwg, lid);
    if (tid >= job.threads) {
        return;
    }
    let go_on = job.cols == 1u;
    var items = job.total;
    if (go_on) {
        items = atomicLoad(&kinks[job.list_off]);
    }
    let scratch = tid * 2u * job.scratch_w;
    for (var at = tid; at < items; at += job.threads) {
        var k = at;
        if (go_on) {
            k = atomicLoad(&kinks[job.list_off + 1u + at]);
        }
        exact_perturbation(k, go_on, scratch);
    }
}

fn exact_perturbation(k: u32, go_on: bool, scratch: u32) {
    let m = job.m;
    let st = fused_step(k);
    let slot = 2u * st.p + k % 2u;
    let run = window_start(slot);
    var s = run.s;
    var comp = run.comp;
    var mag = run.mag;
    for (var j = job.j_begin; j < job.j_end; j++) {
        let dz = step_dz(st, j);
        if (dz == 0.0) {
            continue;
        }
        let z0 = base[job.z_off + st.r * m + j];
        flag_kink_of(st.p, st.plus, z0, z0 + dz, st.r, j);
        let t = layer_act_delta(job.layer, st.r, j, z0, dz) * mask_at(st.r, j);
        if (t == 0.0) {
            continue;
        }
        let at = st.r * m + j;
        if (go_on && inside_shortcut(at, t)) {
            fz_mode = 2u;
            fz_at = job.sc_v + at * job.n_out;
            fz_t = t;
        } else {
            fz_mode = 3u;
            fz_at = exact_sample(st.p, st.plus, st.r, t, j, scratch);
        }
        let v = sample_loss_delta(j, 0u);
        add_compensated(&s, &comp, v);
        mag += abs(v);
    }
    window_end(slot, st, Running(s, comp, mag));
}

// The output's Δz of the fused modes (see `out_dz`): v·t, or the exact path's vector.
fn fused_dz(c: u32) -> real {
    if (fz_mode == 2u) {
        return base[fz_at + c] * fz_t;
    }
    return dst[fz_at + c];
}

// One sample's way from t = ΔA_l[r, j] to the output, layer by layer as the CPU's exact
// path does: ΔZ_{l+1} = W_{l+1}[:, r]·t, then ΔA = g(Z + ΔZ) − g(Z) (closed forms) and
// ΔZ_q = W_q·ΔA, flagging crossed kinks. Returns the offset in dst of the output's Δz.
fn exact_sample(p: u32, plus: bool, r: u32, t: real, j: u32, scratch: u32) -> u32 {
    let m = job.m;
    let q0 = job.layer + 1u;
    var info = q0 * LAYER_INFO;
    var width = plist[info + 2u];
    var cur = scratch;
    var next = scratch + job.scratch_w;
    for (var i = 0u; i < width; i++) {
        let dz = model[plist[info] + i * plist[info + 1u] + r] * t;
        flag_crossing(p, plus, info, i, j, dz);
        dst[cur + i] = dz;
    }
    for (var q = q0 + 1u; q < arrayLength(&plist) / LAYER_INFO; q++) {
        let prev = info;
        info = q * LAYER_INFO;
        // ΔA of layer q − 1, in place.
        for (var i = 0u; i < width; i++) {
            let z0 = base[plist[prev + 3u] + i * m + j];
            dst[cur + i] = layer_act_delta(q - 1u, i, j, z0, dst[cur + i]) * mask_of(plist[prev + 6u], i, j);
        }
        // ΔZ_q = W_q·ΔA into the other vector.
        let w = plist[info];
        let out = plist[info + 2u];
        for (var o = 0u; o < out; o++) {
            var acc: real = 0.0;
            for (var i = 0u; i < width; i++) {
                acc = fma(model[w + o * width + i], dst[cur + i], acc);
            }
            flag_crossing(p, plus, info, o, j, acc);
            dst[next + o] = acc;
        }
        let tmp = cur;
        cur = next;
        next = tmp;
        width = out;
    }
    return cur;
}

// Flags parameter p's side when element (i, j) of the layer described at `info` moves by
// dz across its activation's kink (a dropped unit's does not matter).
fn flag_crossing(p: u32, plus: bool, info: u32, i: u32, j: u32, dz: real) {
    let z0 = base[plist[info + 3u] + i * job.m + j];
    if (crosses(plist[info + 4u], z0, z0 + dz) && mask_of(plist[info + 6u], i, j) != 0.0) {
        atomicOr(&kinks[p], select(2u, 1u, plus));
    }
}
