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
// whole output column (base rows, row r replaced) goes to dst; otherwise
// ΔA_l[r, j] = g(z') − A_l[r, j] does.
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
    let delta = row.moved - row.theta;
    let z0 = base[job.z_off + row.r * m + j];
    var z1: real;
    if (row.is_w) {
        var x: real;
        if (job.in_is_x == 1u) {
            x = model[job.in_off + row.c * m + j];
        } else {
            x = base[job.in_off + row.c * m + j];
        }
        z1 = z0 + delta * x;
    } else {
        z1 = z0 + delta;
    }
    if (crosses(job.act, z0, z1)) {
        atomicOr(&kinks[param_of(k)], 1u);
    }
    if (job.is_output == 1u) {
        for (var i = 0u; i < job.out_dim; i++) {
            dst[i * job.cols + g] = select(base[job.z_off + i * m + j], z1, i == row.r);
        }
    } else {
        dst[g] = act(job.act, z1) - base[job.a_off + row.r * m + j];
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
    let da = src[col];
    let z0 = base[job.z_off + i * m + j];
    let z1 = z0 + model[job.w_off + i * job.in_dim + row.r] * da;
    if (crosses(job.act, z0, z1)) {
        atomicOr(&kinks[param_of(k)], 1u);
    }
    if (job.is_output == 1u) {
        dst[g] = z1;
    } else {
        dst[g] = act(job.act, z1);
    }
}

// Stage 3: layers from l+2 on are one dense matmul for the whole chunk,
// W_q (out_dim × in_dim) · src (in_dim × C), tiled through workgroup memory. Each thread
// still accumulates its dot product by fma in index order.
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
    let m = job.m;
    let z1 = acc + model[job.b_off + i];
    let k = col / m;
    if (crosses(job.act, base[job.z_off + i * m + col % m], z1)) {
        atomicOr(&kinks[param_of(k)], 1u);
    }
    if (job.is_output == 1u) {
        dst[i * job.cols + col] = z1;
    } else {
        dst[i * job.cols + col] = act(job.act, z1);
    }
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
    let m = job.m;
    let z1 = acc + model[job.b_off + i];
    if (crosses(job.act, base[job.z_off + i * m + col % m], z1)) {
        atomicOr(&kinks[param_of(col / m)], 1u);
    }
    if (job.is_output == 1u) {
        dst[g] = z1;
    } else {
        dst[g] = act(job.act, z1);
    }
}
