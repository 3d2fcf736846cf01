//! The chunk plan of the staged kernels: runs of listed parameters of one layer per
//! chunk, as many as the batch buffers and the workgroup grid allow (chunks exist only
//! where the adapter's limits demand them).

use super::pipelines::TILE;
use crate::error::{Error, Result};
use crate::model::{Data, Model};

/// A chunk: the `count` parameters `items[first..first + count]` of the plan's list, all
/// in layer `layer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Chunk {
    pub(super) layer: usize,
    pub(super) first: usize,
    pub(super) count: usize,
}

/// How the staged kernels' perturbations are split to respect the batch buffer capacity.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) chunks: Vec<Chunk>,
    /// Reals each of the two batch buffers must hold.
    pub(super) batch_reals: usize,
}

impl Plan {
    /// The plan over `items`, flat parameter indices in increasing order (so that each
    /// layer's are consecutive in the list).
    pub(super) fn new(
        model: &Model,
        data: &Data,
        capacity: u64,
        max_chunk: Option<usize>,
        items: &[usize],
    ) -> Result<Plan> {
        let m = data.m();
        let sizes = model.sizes();
        let depth = model.depth();
        let mut chunks = Vec::new();
        let mut batch_reals = 1;
        let mut at = 0;
        for l in 0..depth {
            let end_of_layer = model.layout().bias(l).range().end;
            let n_layer = items[at..].partition_point(|&p| p < end_of_layer);
            let (mut first, end) = (at, at + n_layer);
            at = end;
            if first == end {
                continue;
            }
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
                .min(max_chunk.unwrap_or(usize::MAX));
            if fit == 0 {
                return Err(Error::gpu(
                    crate::error::GpuErrorKind::Limit,
                    format!(
                        "one perturbation of layer {} needs {} values of batch memory, more than the adapter's buffer limit allows",
                        l + 1,
                        per_param / 2
                    ),
                ));
            }
            while first < end {
                let count = fit.min(end - first);
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
