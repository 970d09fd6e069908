//! Row access by global id, independent of where rows are stored.
//!
//! The offline fit keeps all rows in one contiguous matrix; the daemon keeps
//! the rows it has incorporated in its state and the plate in flight in a
//! separate matrix. Sampling and alignment only need "row j's neighbour-space
//! vector and batch", so they take a [`RowSource`] and work for both.

use anyhow::{Context, Result};
use ndarray::ArrayView2;

/// Neighbour-space rows with their batch ids.
pub trait RowSource: Sync {
    /// Number of rows (ids are `0..len`).
    fn len(&self) -> usize;
    /// True when there are no rows.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Dimensions of a row.
    fn dims(&self) -> usize;
    /// Row `i`'s vector.
    fn row(&self, i: usize) -> &[f32];
    /// Row `i`'s batch id.
    fn batch(&self, i: usize) -> u32;
}

/// Rows in one contiguous row-major matrix.
pub struct MatrixRows<'a> {
    data: &'a [f32],
    dims: usize,
    batch_of: &'a [u32],
}

impl<'a> MatrixRows<'a> {
    /// Wrap a standard-layout matrix and its batch ids.
    pub fn new(y: ArrayView2<'a, f32>, batch_of: &'a [u32]) -> Result<Self> {
        let dims = y.ncols();
        anyhow::ensure!(batch_of.len() == y.nrows(), "batch ids do not match rows");
        let data = y
            .to_slice()
            .context("neighbour-space matrix is not in standard layout")?;
        Ok(MatrixRows {
            data,
            dims,
            batch_of,
        })
    }
}

impl RowSource for MatrixRows<'_> {
    fn len(&self) -> usize {
        self.batch_of.len()
    }
    fn dims(&self) -> usize {
        self.dims
    }
    fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dims..(i + 1) * self.dims]
    }
    fn batch(&self, i: usize) -> u32 {
        self.batch_of[i]
    }
}

/// Two row sets back to back: ids `0..a.len()` are `a`'s, the rest `b`'s.
pub struct Concat<'a, A: RowSource, B: RowSource> {
    /// First part.
    pub a: &'a A,
    /// Second part.
    pub b: &'a B,
}

impl<A: RowSource, B: RowSource> RowSource for Concat<'_, A, B> {
    fn len(&self) -> usize {
        self.a.len() + self.b.len()
    }
    fn dims(&self) -> usize {
        self.a.dims()
    }
    fn row(&self, i: usize) -> &[f32] {
        let n = self.a.len();
        if i < n {
            self.a.row(i)
        } else {
            self.b.row(i - n)
        }
    }
    fn batch(&self, i: usize) -> u32 {
        let n = self.a.len();
        if i < n {
            self.a.batch(i)
        } else {
            self.b.batch(i - n)
        }
    }
}
