//! gradcheck: proof that a neural network's backpropagation is right.
//!
//! Central differences gradapprox_i = (J(θ+ε·e_i) − J(θ−ε·e_i)) / 2ε over every parameter,
//! the J± evaluated in one batch (on the GPU through wgpu, or on the CPU in f64), compared
//! with the analytic gradient by the notebook's difference
//! ‖grad − gradapprox‖₂ / (‖grad‖₂ + ‖gradapprox‖₂), tensor by tensor, with a diagnosis of
//! what kind of mistake a failing gradient looks like.
//!
//! ```no_run
//! use gradcheck::{check::GradCheck, examples};
//! let p = examples::seed_problem(true).unwrap();
//! let report = GradCheck::new().run(&p.model, &p.params, &p.data, &p.grads).unwrap();
//! assert!(!report.passed);
//! ```
#![warn(missing_docs)]

pub mod batch;
pub mod check;
pub mod compare;
pub mod cpu;
pub mod diagnose;
pub mod error;
pub mod examples;
pub mod gpu;
pub mod io;
pub mod model;
pub mod report;
pub mod shard;
pub mod sweep;

pub use check::{Backend, GradCheck, KinkPolicy, Precision, Report};
pub use error::{Error, Result};
pub use model::{Activation, Data, Dropout, Grads, Loss, Model, ModelSpec, Params};
