// The perturbed forward passes of one chunk of perturbations (all in layer l): batch
// column k·m + j holds sample j under perturbation k (parameter first + k/2, sign ±).
// θ is never copied: each thread reads the base θ and applies ±ε to its one entry.

struct Row {
    r: u32,        // perturbed row of layer l
    c: u32,        // perturbed column (weights)
    is_w: bool,
    theta: real,   // θ_p
    moved: real,   // fl(θ_p ± ε)
}

fn perturbed_row(k: u32) -> Row {
    let p = param_of(k);
    let local = p - job.w_param;
    let nw = job.rows_l * job.cols_l;
    var row: Row;
    row.is_w = local < nw;
    if (row.is_w) {
        row.r = local / job.cols_l;
        row.c = local % job.cols_l;
    } else {
        row.r = local - nw;
        row.c = 0u;
    }
    row.theta = model[job.theta_off + p];
    row.moved = row.theta + sign_of(k) * model[0];
    return row;
}

// Stage 1, one thread per (k, j): the changed row r of Z_l. For the output layer the
// whole output column goes to dst (plain: base rows with row r replaced; Δ path: ΔZ, zero
// but row r); otherwise ΔA_l[r, j] does (plain: g(z') − A_l[r, j]; Δ path: act_delta).
@compute @workgroup_size(64)
fn perturb_row(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = linear_id(wid, nwg, lid);
    if (g >= job.total) {
        return;
    }
    let m = job.m;
    let k = g / m;
    let j = g % m;
    let row = perturbed_row(k);
    // Plain: the real step fl(θ ± ε) − θ. Δ path: ±ε itself (θ is never rounded, the
    // host divides by 2·fl(ε)).
    let step = select(row.moved - row.theta, sign_of(k) * model[0], job.delta == 1u);
    let z0 = base[job.z_off + row.r * m + j];
    var dz = step;
    if (row.is_w) {
        if (job.in_is_x == 1u) {
            dz = step * model[job.in_off + row.c * m + j];
        } else {
            dz = step * base[job.in_off + row.c * m + j];
        }
    }
    let z1 = z0 + dz;
    flag_kink(k, z0, z1, row.r, j);
    if (job.is_output == 1u) {
        for (var i = 0u; i < job.out_dim; i++) {
            let other = select(base[job.z_off + i * m + j], 0.0, job.delta == 1u);
            dst[i * job.cols + g] = select(other, stage_value(z0, z1, dz, row.r, j), i == row.r);
        }
    } else if (job.delta == 1u) {
        dst[g] = act_delta(job.act, z0, dz) * mask_at(row.r, j);
    } else {
        dst[g] = act(job.act, z1) * mask_at(row.r, j) - base[job.a_off + row.r * m + j];
    }
}

// Stage 2, one thread per (i, column): layer l+1 sees the rank-1 change
// W_{l+1}[:, r] ⊗ ΔA_l[r, :] on top of its base pre-activations.
@compute @workgroup_size(64)
fn rank1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = linear_id(wid, nwg, lid);
    if (g >= job.total) {
        return;
    }
    let m = job.m;
    let i = g / job.cols;
    let col = g % job.cols;
    let k = col / m;
    let j = col % m;
    let row = perturbed_row(k);
    let dz = model[job.w_off + i * job.in_dim + row.r] * src[col];
    let z0 = base[job.z_off + i * m + j];
    let z1 = z0 + dz;
    flag_kink(k, z0, z1, i, j);
    dst[g] = stage_value(z0, z1, dz, i, j);
}

// Stage 3: layers from l+2 on are one dense matmul for the whole chunk,
// W_q (out_dim × in_dim) · src (in_dim × C), tiled through workgroup memory. Each thread
// still accumulates its dot product by fma in index order. On the Δ path src holds ΔA and
// the product is ΔZ (no bias).
const TILE: u32 = 16u;
var<workgroup> tile_w: array<array<real, 16>, 16>;
var<workgroup> tile_x: array<array<real, 16>, 16>;

@compute @workgroup_size(16, 16)
fn dense(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let col = wid.x * TILE + lid.x;
    let i = wid.y * TILE + lid.y;
    var acc: real = 0.0;
    let tiles = (job.in_dim + TILE - 1u) / TILE;
    for (var tt = 0u; tt < tiles; tt++) {
        let t0 = tt * TILE;
        // lid.y indexes W's row, lid.x its column within the tile (and src likewise).
        let wt = t0 + lid.x;
        tile_w[lid.y][lid.x] = select(0.0, model[job.w_off + min(i, job.out_dim - 1u) * job.in_dim + min(wt, job.in_dim - 1u)], i < job.out_dim && wt < job.in_dim);
        let xt = t0 + lid.y;
        tile_x[lid.y][lid.x] = select(0.0, src[min(xt, job.in_dim - 1u) * job.cols + min(col, job.cols - 1u)], xt < job.in_dim && col < job.cols);
        workgroupBarrier();
        let n = min(TILE, job.in_dim - t0);
        for (var t = 0u; t < n; t++) {
            acc = fma(tile_w[lid.y][t], tile_x[t][lid.x], acc);
        }
        workgroupBarrier();
    }
    if (i >= job.out_dim || col >= job.cols) {
        return;
    }
    dst[i * job.cols + col] = dense_value(i, col, acc);
}

// Stage 3's output from the dot product W_q[i, :]·src[:, col]: plain, Z = acc + b;
// Δ path, ΔZ = acc on top of the base Z.
fn dense_value(i: u32, col: u32, acc: real) -> real {
    let m = job.m;
    let z0 = base[job.z_off + i * m + col % m];
    var z1: real;
    var dz: real;
    if (job.delta == 1u) {
        dz = acc;
        z1 = z0 + dz;
    } else {
        z1 = acc + model[job.b_off + i];
        dz = z1 - z0;
    }
    flag_kink(col / m, z0, z1, i, col % m);
    return stage_value(z0, z1, dz, i, col % m);
}

// Stage 3 for narrow layers (out_dim < 16, e.g. the output layer): one thread per
// (i, column), no tiles, so no 16× idle rows. Same fma order as `dense`.
@compute @workgroup_size(64)
fn dense_narrow(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = linear_id(wid, nwg, lid);
    if (g >= job.total) {
        return;
    }
    let i = g / job.cols;
    let col = g % job.cols;
    var acc: real = 0.0;
    for (var t = 0u; t < job.in_dim; t++) {
        acc = fma(model[job.w_off + i * job.in_dim + t], src[t * job.cols + col], acc);
    }
    dst[g] = dense_value(i, col, acc);
}
