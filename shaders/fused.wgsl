// The fused Δ path: one thread per perturbation of a layer whose change reaches the output
// in closed form, from the changed row to ΔJ with nothing written per sample.
//
// Perturbation k moves parameter p = first + k/2 (a contiguous range, no table) by
// ±ε. Sample by sample, in order: ΔZ_l[r, j] (= ±ε·input[c, j] for a weight, ±ε for a
// bias), then
//   * output layer: Δz_out = e_r·ΔZ_l[r, j];
//   * otherwise t = ΔA_l[r, j] and Δz_out = v_{r,j}·t — the piecewise-linear shortcut
//     (the CPU's `Shortcut` tables, in the base buffer), valid while t stays inside the
//     interval that crosses no kink after layer l;
//   * at a sample outside it the thread puts k on the layer's work list and stops:
//     `fused_exact` (fused_exact.wgsl) redoes that perturbation, each sample by the
//     shortcut or layer by layer as its own interval test says;
// then the loss change, summed with Neumaier's compensation in sample order (as the
// CPU's shortcut does), and the L2 change — exactly what `reduce_delta` writes.
@compute @workgroup_size(64)
fn fused_delta(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let k = linear_id(wid, nwg, lid);
    if (k >= job.total) {
        return;
    }
    let m = job.m;
    let st = fused_step(k);
    let slot = 2u * st.p + k % 2u;
    fz_mode = select(2u, 1u, job.is_output == 1u);
    let run = window_start(slot);
    if (run.mag < 0.0) {
        // Put on the work list in an earlier window: `fused_exact` redoes it whole.
        return;
    }
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
        if (job.is_output == 1u) {
            fz_at = st.r;
            fz_t = dz;
        } else {
            let t = layer_act_delta(job.layer, st.r, j, z0, dz) * mask_at(st.r, j);
            if (t == 0.0) {
                continue;
            }
            let at = st.r * m + j;
            if (job.sc_v == 0u || !inside_shortcut(at, t)) {
                // The whole perturbation goes to `fused_exact`, which decides every sample
                // of it again itself (so no sample is counted twice or lost).
                let at_list = atomicAdd(&kinks[job.list_off], 1u);
                atomicStore(&kinks[job.list_off + 1u + at_list], k);
                // Marks it listed for this kernel's later windows (fused_exact overwrites).
                results[2u * job.n_params + slot] = -1.0;
                return;
            }
            fz_mode = 2u;
            fz_at = job.sc_v + at * job.n_out;
            fz_t = t;
        }
        let v = sample_loss_delta(j, 0u);
        add_compensated(&s, &comp, v);
        mag += abs(v);
    }
    window_end(slot, st, Running(s, comp, mag));
}

// The shortcut's v·t (mode 2 of `out_dz`).
fn fused_dz(c: u32) -> real {
    return base[fz_at + c] * fz_t;
}

