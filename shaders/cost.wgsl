// The cost of every perturbation: per-sample losses from the output pre-activations,
// then one thread per perturbation sums them in sample order (fixed order: the same
// inputs give bit-identical J± on every run).

// One thread per column: the loss of sample j under perturbation k, from the output
// column src[0..nL, col]. Same expressions, same order as the CPU reference.
@compute @workgroup_size(64)
fn sample_loss(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let col = linear_id(wid, nwg, lid);
    if (col >= job.total) {
        return;
    }
    if (job.delta == 1u) {
        dst[col] = sample_loss_delta(col % job.m, col);
        return;
    }
    dst[col] = sample_loss_plain(col % job.m, col);
}

// One thread per perturbation k: J = (1/m)·Σ_j loss + (λ/(2m))·(Σ‖W‖² − θ² + θ'²).
@compute @workgroup_size(64)
fn reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let k = linear_id(wid, nwg, lid);
    if (k >= job.total) {
        return;
    }
    if (job.delta == 1u) {
        reduce_delta(k);
        return;
    }
    let m = job.m;
    var s: real = 0.0;
    for (var j = 0u; j < m; j++) {
        s += src[k * m + j];
    }
    var cost = (1.0 / real(m)) * s;
    if (job.l2 == 1u) {
        let p = param_of(k);
        let th = model[job.theta_off + p];
        let moved = th + sign_of(k) * model[0];
        var sumsq = model[2];
        if (p - job.w_param < job.rows_l * job.cols_l) {
            sumsq = sumsq - th * th + moved * moved;
        }
        cost += model[1] * sumsq;
    }
    results[result_slot(param_of(k), k)] = cost;
}

// The Δ path, one thread per perturbation k: ΔJ = (1/m)·Σ_j Δloss_j (Neumaier-compensated,
// in sample order) plus the L2 change (λ/(2m))·d·(2θ + d) of a weight (d = ±ε); and
// Σ_j |Δloss_j|/m + |ΔL2|, the size of what was summed, to results[2N + …] (noise scale).
fn reduce_delta(k: u32) {
    let m = job.m;
    var s: real = 0.0;
    var c: real = 0.0;
    var mag: real = 0.0;
    for (var j = 0u; j < m; j++) {
        let v = src[k * m + j];
        add_compensated(&s, &c, v);
        mag += abs(v);
    }
    let p = param_of(k);
    let is_w = p - job.w_param < job.rows_l * job.cols_l;
    finish_delta(result_slot(p, k), p, is_w, sign_of(k) * model[0], s + c, mag);
}

// The staged kernels never set the fused modes (see `fused_dz` in fused*.wgsl).
fn fused_dz(c: u32) -> real {
    return 0.0;
}
