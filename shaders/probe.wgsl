// Evaluates one elementary function over src → dst, so that the f64 math library can be
// measured against the host's (tests, and `gradcheck compare`). job.act selects it:
// 0 exp, 1 log, 2 tanh, 3 sigmoid, 4 expm1, 5 log1p.
@compute @workgroup_size(64)
fn math_probe(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = linear_id(wid, nwg, lid);
    if (g >= job.total) {
        return;
    }
    let x = src[g];
    switch job.act {
        case 0u: { dst[g] = exp_r(x); }
        case 1u: { dst[g] = log_r(x); }
        case 2u: { dst[g] = tanh_r(x); }
        case 3u: { dst[g] = act(2u, x); }
        case 4u: { dst[g] = expm1_r(x); }
        default: { dst[g] = log1p_r(x); }
    }
}
