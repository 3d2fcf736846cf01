//! The library's error type: every bad input is named (file, tensor, shape) so the CLI
//! can print one line and exit 2.

use std::path::PathBuf;

/// Everything that can go wrong before or during a check.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read. (Not a `source`: the message already says it,
    /// and a chain would print it twice.)
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// A file exists but is not what it should be (not an npz, bad JSON, bad TOML, …).
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A tensor is missing from a file.
    #[error("{path}: missing key {key:?} (the file has {present})")]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key that should be there.
        key: String,
        /// The keys it does have, comma-separated.
        present: String,
    },
    /// A file holds a tensor that the model has no use for.
    #[error("{path}: unexpected key {key:?} (expected {expected})")]
    ExtraKey {
        /// The file.
        path: PathBuf,
        /// The key that should not be there.
        key: String,
        /// The keys the model expects, comma-separated.
        expected: String,
    },
    /// Shapes disagree (message names the tensors and both shapes).
    #[error("{0}")]
    Shape(String),
    /// A NaN or infinity in an input tensor.
    #[error("{path}: {key} holds {value} at {position}")]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The tensor.
        key: String,
        /// NaN, inf or -inf.
        value: String,
        /// Index in the tensor, e.g. `[1, 2]`.
        position: String,
    },
    /// The model spec is invalid.
    #[error("model spec: {0}")]
    Spec(String),
    /// A setting is out of range (ε ≤ 0, threshold ≤ 0, …).
    #[error("{0}")]
    Config(String),
    /// The GPU backend could not do the job; `kind` says whether the CPU may stand in.
    #[error("gpu: {msg}")]
    Gpu {
        /// What kind of failure.
        kind: GpuErrorKind,
        /// What happened, for the user.
        msg: String,
    },
    /// A broken invariant of gradcheck itself: a bug.
    #[error("internal error (a bug in gradcheck {version}: please report it with the command that caused it): {0}", version = env!("CARGO_PKG_VERSION"))]
    Internal(String),
}

/// Kinds of GPU failure. `--backend auto` falls back to the CPU on the first three (the
/// machine cannot run this job on a GPU) and reports the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuErrorKind {
    /// No usable adapter (none found, none matching the name, or it could not be opened).
    NoAdapter,
    /// The adapter lacks a feature the job needs (SHADER_F64).
    MissingFeature,
    /// The job exceeds the adapter's limits (buffer sizes, 32-bit indices, loop cap).
    Limit,
    /// The device was lost during the evaluation.
    DeviceLost,
    /// The device ran out of memory.
    OutOfMemory,
    /// A shader or API validation error: a bug.
    Internal,
    /// The model has layer types without GPU kernels (conv2d, pooling): the CPU runs it.
    Unsupported,
}

impl GpuErrorKind {
    /// Whether `--backend auto` may run the job on the CPU instead.
    pub fn cpu_may_stand_in(self) -> bool {
        matches!(
            self,
            GpuErrorKind::NoAdapter
                | GpuErrorKind::MissingFeature
                | GpuErrorKind::Limit
                | GpuErrorKind::Unsupported
        )
    }
}

impl Error {
    /// A GPU error of `kind`.
    pub fn gpu(kind: GpuErrorKind, msg: impl Into<String>) -> Error {
        Error::Gpu {
            kind,
            msg: msg.into(),
        }
    }
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;
