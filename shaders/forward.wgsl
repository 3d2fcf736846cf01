// The base forward pass: Z_l = W_l·A_{l−1} + b_l and A_l = g(Z_l), written to the base
// buffer once; every perturbation starts from it.

// One thread per (i, j) of Z_l (out_dim × m). Dot products accumulate by fma in index
// order, as the CPU reference and numpy's dgemm do.
@compute @workgroup_size(64)
fn base_layer(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = linear_id(wid, nwg, lid);
    if (g >= job.total) {
        return;
    }
    let m = job.m;
    let i = g / m;
    let j = g % m;
    var acc: real = 0.0;
    for (var t = 0u; t < job.in_dim; t++) {
        let w = model[job.w_off + i * job.in_dim + t];
        var x: real;
        if (job.in_is_x == 1u) {
            x = model[job.in_off + t * m + j];
        } else {
            x = base[job.in_off + t * m + j];
        }
        acc = fma(w, x, acc);
    }
    let z = acc + model[job.b_off + i];
    base[job.z_off + i * m + j] = z;
    base[job.a_off + i * m + j] = act(job.act, z) * mask_at(i, j);
}
