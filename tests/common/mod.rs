//! Helpers shared by the integration tests: temp dirs, npz writing, running the CLI.
// Without the cli/gpu features some helpers and imports serve only gated-out tests.
#![cfg_attr(not(all(feature = "cli", feature = "gpu")), allow(unused))]
#![allow(dead_code)]

pub mod conv_nets;

use std::path::{Path, PathBuf};
use std::process::Command;

#[cfg(feature = "gpu")]
use std::sync::Arc;

use gradcheck::check::Report;
#[cfg(feature = "gpu")]
use gradcheck::eval::gpu::GpuContext;
use ndarray::Array2;
use ndarray_npy::NpzWriter;

/// A fresh directory under the system temp dir, unique per test, removed when dropped.
pub fn tempdir(tag: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("gradcheck-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

/// A test's scratch directory (a path; deleted with everything in it on drop).
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes (key, matrix) pairs as an .npz.
pub fn write_npz(path: &Path, arrays: &[(&str, Array2<f64>)]) {
    let mut w = NpzWriter::new(std::fs::File::create(path).unwrap());
    for (k, a) in arrays {
        w.add_array(*k, a).unwrap();
    }
    w.finish().unwrap();
}

#[cfg(feature = "cli")]
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

#[cfg(feature = "gpu")]
/// The shared GPU context, or None (with the reason printed) when there is no adapter —
/// except under CI=true, where the GPU tests must run: then it panics.
pub fn gpu() -> Option<Arc<GpuContext>> {
    match GpuContext::shared(None) {
        Ok(c) => {
            eprintln!(
                "GPU tests run on adapter: {} (f64: {})",
                c.adapter_name(),
                c.has_f64()
            );
            // .ci/run checks this marker to prove the GPU tests really ran.
            let marker = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpu-adapter.txt");
            let _ = std::fs::write(
                marker,
                format!("{} (f64: {})\n", c.adapter_name(), c.has_f64()),
            );
            Some(c)
        }
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but the GPU tests found no adapter: {e}");
            }
            eprintln!("skipping GPU test: {e}");
            None
        }
    }
}

/// The names of a report's failing tensors, in flat order.
pub fn failing(r: &Report) -> Vec<&str> {
    r.tensors
        .iter()
        .filter(|t| !t.passed)
        .map(|t| t.name.as_str())
        .collect()
}
