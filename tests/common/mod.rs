//! Helpers shared by the integration tests: temp dirs, npz writing, running the CLI.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ndarray::Array2;
use ndarray_npy::NpzWriter;

/// A fresh directory under the system temp dir, unique per test.
pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gradcheck-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes (key, matrix) pairs as an .npz.
pub fn write_npz(path: &Path, arrays: &[(&str, Array2<f64>)]) {
    let mut w = NpzWriter::new(std::fs::File::create(path).unwrap());
    for (k, a) in arrays {
        w.add_array(*k, a).unwrap();
    }
    w.finish().unwrap();
}

/// Runs the CLI; returns (exit code, stdout, stderr).
pub fn gradcheck(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gradcheck"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The seed fixture directory: ../shared/fixtures/seed when present, else the in-repo copy.
pub fn seed_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/fixtures/seed");
    if shared.join("seed_params.npz").exists() {
        shared
    } else {
        root.join("fixtures/seed")
    }
}

/// Deterministic pseudo-random numbers (SplitMix64) for generated nets.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [-1, 1).
    pub fn sym(&mut self) -> f64 {
        2.0 * self.next_f64() - 1.0
    }
}

/// A random problem: He-scaled weights, N(ish) inputs, targets fitting the loss.
pub fn random_problem(
    spec: gradcheck::ModelSpec,
    m: usize,
    seed: u64,
) -> (gradcheck::Model, gradcheck::Params, gradcheck::Data) {
    use gradcheck::{Data, Loss, Model, Params};
    let model = Model::new(spec).unwrap();
    let mut rng = Rng(seed);
    let mut theta = vec![0.0; model.n_params()];
    for slot in model.layout().tensors() {
        let scale = (2.0 / slot.cols as f64).sqrt();
        for v in &mut theta[slot.range()] {
            *v = rng.sym() * scale;
        }
    }
    let params = Params::new(model.layout().clone(), theta).unwrap();
    let n0 = model.sizes()[0];
    let nl = *model.sizes().last().unwrap();
    let x = Array2::from_shape_fn((n0, m), |_| rng.sym() * 1.5);
    let y = match model.loss() {
        Loss::SoftmaxCrossEntropy => {
            let mut y = Array2::zeros((nl, m));
            for j in 0..m {
                y[[(rng.next_f64() * nl as f64) as usize % nl, j]] = 1.0;
            }
            y
        }
        Loss::BinaryCrossEntropy => {
            Array2::from_shape_fn((nl, m), |_| f64::from(u8::from(rng.next_f64() < 0.5)))
        }
        Loss::MeanSquaredError => Array2::from_shape_fn((nl, m), |_| rng.sym()),
    };
    let data = Data::new(&model, x, y).unwrap();
    (model, params, data)
}
