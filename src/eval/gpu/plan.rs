//! The chunk plan: consecutive parameters of one layer per chunk, as many as the batch
//! buffers and the workgroup grid allow (chunks exist only where the adapter's limits
//! demand them).

use super::EvalOptions;
use super::pipelines::TILE;
use crate::error::{Error, Result};
use crate::model::{Data, Model};

/// A chunk: `count` consecutive parameters of layer `layer` starting at flat index `first`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Chunk {
    pub(super) layer: usize,
    pub(super) first: usize,
    pub(super) count: usize,
}

/// How the 2N perturbations are split to respect the batch buffer capacity.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) chunks: Vec<Chunk>,
    /// Reals each of the two batch buffers must hold.
    pub(super) batch_reals: usize,
}

impl Plan {
    pub(super) fn new(
        model: &Model,
        data: &Data,
        capacity: u64,
        opts: &EvalOptions,
    ) -> Result<Plan> {
        let wanted = opts.range.clone().unwrap_or(0..model.n_params());
        let m = data.m();
        let sizes = model.sizes();
        let depth = model.depth();
        let mut chunks = Vec::new();
        let mut batch_reals = 1;
        for l in 0..depth {
            // Widest batch column block any stage of a layer-l perturbation writes.
            let widest = if l + 1 == depth {
                sizes[depth]
            } else {
                *sizes[l + 2..].iter().max().expect("non-empty")
            }
            .max(1);
            let per_param = 2 * m * widest;
            // dense's grid: columns ≤ 65 535 tiles of 16.
            let by_grid = (65_535 * TILE as usize) / (2 * m);
            let fit = (capacity as usize / per_param)
                .min(by_grid)
                .min(opts.max_chunk.unwrap_or(usize::MAX));
            if fit == 0 {
                return Err(Error::Gpu(format!(
                    "one perturbation of layer {} needs {} values of batch memory, more than the adapter's buffer limit allows",
                    l + 1,
                    per_param / 2
                )));
            }
            let layer = model.layout().weight(l).offset..model.layout().bias(l).range().end;
            let range = layer.start.max(wanted.start)..layer.end.min(wanted.end);
            let mut first = range.start;
            while first < range.end {
                let count = fit.min(range.end - first);
                chunks.push(Chunk {
                    layer: l,
                    first,
                    count,
                });
                batch_reals = batch_reals.max(count * per_param);
                first += count;
            }
        }
        Ok(Plan {
            chunks,
            batch_reals,
        })
    }
}
