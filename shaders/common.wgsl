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
}

// Model buffer header: [0] ε, [1] λ/(2m), [2] Σ‖W‖², [3..] leaky slopes per layer.
@group(0) @binding(0) var<uniform> job: Job;
@group(0) @binding(1) var<storage, read> model: array<real>;
@group(0) @binding(2) var<storage, read_write> base: array<real>;
@group(0) @binding(3) var<storage, read_write> src: array<real>;
@group(0) @binding(4) var<storage, read_write> dst: array<real>;
@group(0) @binding(5) var<storage, read_write> results: array<real>;
@group(0) @binding(6) var<storage, read_write> kinks: array<atomic<u32>>;

fn act(code: u32, z: real) -> real {
    switch code {
        case 1u: { return select(0.0, z, z > 0.0); }
        case 2u: { return 1.0 / (1.0 + exp_r(-z)); }
        case 3u: { return tanh_r(z); }
        case 4u: { return select(model[job.slope_idx] * z, z, z > 0.0); }
        default: { return z; }
    }
}

fn crosses(code: u32, z0: real, z1: real) -> bool {
    return (code == 1u || code == 4u) && ((z0 > 0.0) != (z1 > 0.0));
}

// Linear thread index of a 1-D kernel dispatched as a 2-D grid of 64-wide workgroups
// (the grid is 2-D only to stay under 65 535 workgroups per dimension).
fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * 64u + lid.x;
}

// The parameter perturbed by batch column block k, and its sign.
fn param_of(k: u32) -> u32 {
    return job.first + k / 2u;
}

fn sign_of(k: u32) -> real {
    return select(real(-1.0), real(1.0), k % 2u == 0u);
}
