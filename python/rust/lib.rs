//! `gradcheck._gradcheck`: the library behind the Python package, one function.
//!
//! Arrays cross as (name, shape, little-endian float64 bytes, was-float32) — the Python side
//! makes them contiguous float64 with numpy — and are validated by the same code as the
//! CLI's .npz files, so bad input raises the CLI's one-line message as `ValueError`. The
//! report comes back as the CLI's JSON. The GIL is released while the check runs.

use std::path::PathBuf;

use gradcheck::check::{Backend, KinkPolicy, Precision};
use gradcheck::plan::{Epsilon, Plan};
use gradcheck::io::Npz;
use gradcheck::problem::Problem;
use ndarray::{ArrayD, IxDyn};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// One array as it crosses: name, shape, float64 bytes, whether it was float32.
type Wire = (String, Vec<usize>, Vec<u8>, bool);

fn npz(label: &str, arrays: Vec<Wire>) -> PyResult<Npz> {
    let mut out = Npz {
        path: PathBuf::from(label),
        arrays: Vec::with_capacity(arrays.len()),
        f32_keys: Vec::new(),
    };
    for (name, shape, bytes, was_f32) in arrays {
        let values: Vec<f64> = bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect();
        let arr = ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|_| {
            PyValueError::new_err(format!(
                "{label}: {name} has {} bytes, not what shape {shape:?} needs",
                bytes.len()
            ))
        })?;
        if was_f32 {
            out.f32_keys.push(name.clone());
        }
        out.arrays.push((name, arr));
    }
    Ok(out)
}

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> PyResult<T> {
    serde_json::from_value(serde_json::Value::String(text.into())).map_err(|_| {
        PyValueError::new_err(format!(
            "{what} = {text:?} is not one of the allowed values"
        ))
    })
}

/// Runs a check; returns the report as the CLI's JSON and as its text table.
///
/// `options` is a JSON object: epsilon, threshold (numbers or null), backend ("auto",
/// "cpu", "gpu"), precision ("auto", "f64", "f64-plain", "f32", "f32-plain"), kinks
/// ("exclude", "include"), stencil (2 or 4).
#[pyfunction]
#[pyo3(signature = (parameters, data, gradients, model, options))]
fn check(
    py: Python<'_>,
    parameters: Vec<Wire>,
    data: Vec<Wire>,
    gradients: Option<Vec<Wire>>,
    model: Option<String>,
    options: String,
) -> PyResult<(String, String)> {
    let opts: serde_json::Value = serde_json::from_str(&options).map_err(value_error)?;
    let spec = model
        .map(|m| gradcheck::model::Spec::from_json(&m).map_err(|e| value_error(format!("model spec: {e}"))))
        .transpose()?;
    let params = npz("parameters", parameters)?;
    let data = npz("data", data)?;
    let grads = gradients.map(|g| npz("gradients", g)).transpose()?;
    let problem = Problem::from_npz(&params, &data, grads.as_ref(), spec).map_err(value_error)?;
    let text = |k: &str, default: &str| opts[k].as_str().unwrap_or(default).to_string();
    // The Python side has checked the types; the values are the library's to judge.
    let plan = Plan {
        epsilon: opts["epsilon"].as_f64().map_or(Epsilon::Default, Epsilon::Value),
        threshold: opts["threshold"].as_f64(),
        backend: parse::<Backend>("backend", &text("backend", "auto"))?,
        precision: parse::<Precision>("precision", &text("precision", "auto"))?,
        kinks: parse::<KinkPolicy>("kinks", &text("kinks", "exclude"))?,
        stencil: opts["stencil"].as_u64().unwrap_or(2),
        progress: Some(counter().clone()),
        ..Plan::default()
    };
    let report = if forked() {
        // A fork()ed child (multiprocessing's default on Linux): the parent's thread pool
        // and GPU context do not exist here. A pool of its own, and the CPU.
        let plan = match plan.backend {
            Backend::Gpu => {
                return Err(value_error(
                    "backend=\"gpu\" in a fork()ed process: the parent's GPU context cannot be used after fork(); use multiprocessing's \"spawn\" start method, or backend=\"cpu\"",
                ));
            }
            _ => Plan {
                backend: Backend::Cpu,
                ..plan
            },
        };
        py.detach(|| gradcheck::eval::cpu::with_own_thread_pool(|| plan.check(&problem)))
    } else {
        py.detach(|| plan.check(&problem))
    }
    .map_err(value_error)?;
    Ok((
        gradcheck::report::render_json(&report),
        gradcheck::report::render_text(&report),
    ))
}

/// The process the module was loaded in; a different PID later means a fork()ed child.
static LOADED_IN: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

fn forked() -> bool {
    LOADED_IN.get().is_some_and(|&pid| pid != std::process::id())
}

/// The counter every check of this module counts its perturbations into (the package's
/// progress display polls it from another thread while a check runs).
fn counter() -> &'static gradcheck::eval::Progress {
    static COUNTER: std::sync::OnceLock<gradcheck::eval::Progress> = std::sync::OnceLock::new();
    COUNTER.get_or_init(gradcheck::eval::Progress::new)
}

/// Perturbations the CPU evaluator has done in this module's checks so far.
#[pyfunction]
fn progress() -> usize {
    counter().done()
}

/// The version of the Rust library underneath.
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[pymodule]
fn _gradcheck(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let _ = LOADED_IN.set(std::process::id());
    m.add_function(wrap_pyfunction!(check, m)?)?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(progress, m)?)?;
    Ok(())
}
