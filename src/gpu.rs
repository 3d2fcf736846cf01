//! GPU evaluator (placeholder until the wgpu backend lands).

use crate::check::{Evaluation, Precision};
use crate::error::{Error, Result};
use crate::model::{Data, Model, Params};

/// Every J± on the GPU.
pub fn evaluate(
    _model: &Model,
    _params: &Params,
    _data: &Data,
    _epsilon: f64,
    _precision: Precision,
    _adapter: Option<&str>,
) -> Result<Evaluation> {
    Err(Error::Gpu("the GPU backend is not built yet".into()))
}

/// A human description of the adapters found.
pub fn describe_adapters() -> String {
    "no GPU backend yet\n".into()
}
