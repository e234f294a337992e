//! Input batches of one side.

use candle_core::{Device, Tensor};

use crate::config::{FeatureKind, ModelConfig, Side};
use crate::error::ModelError;

/// Feature values of one side, one tensor per feature of that side in config order:
/// categorical `[B]` u32, multi-categorical `[B, max_len]` u32 with 0 = padding, dense `[B, dim]` f32.
#[derive(Debug, Clone)]
pub struct SideBatch {
    /// One tensor per feature of the side, in config order.
    pub columns: Vec<Tensor>,
}

/// Host data of one column for [`SideBatch::from_host`].
#[derive(Debug, Clone, Copy)]
pub enum HostColumn<'a> {
    /// Categorical (`B` ids) or multi-categorical (`B * max_len` ids, row-major, 0 = padding).
    Ids(&'a [u32]),
    /// Dense, `B * dim` floats, row-major.
    Dense(&'a [f32]),
}

impl SideBatch {
    /// Builds a batch of `batch_size` examples on `device` from host slices, one per feature of `side`
    /// in config order, checking kinds and lengths (id ranges are checked when the batch is encoded).
    ///
    /// ```
    /// use dssm_model::{FeatureSpec, HostColumn, ModelConfig, Side, SideBatch};
    /// let config = ModelConfig {
    ///     features: vec![
    ///         FeatureSpec::categorical("user_id", Side::User, 10),
    ///         FeatureSpec::dense("age", Side::User, 1),
    ///     ],
    ///     ..ModelConfig::default()
    /// };
    /// let batch = SideBatch::from_host(
    ///     &config,
    ///     Side::User,
    ///     2,
    ///     &[HostColumn::Ids(&[3, 7]), HostColumn::Dense(&[0.5, 0.25])],
    ///     &candle_core::Device::Cpu,
    /// )?;
    /// assert_eq!(batch.columns[1].dims(), &[2, 1]);
    /// # Ok::<(), dssm_model::ModelError>(())
    /// ```
    pub fn from_host(
        config: &ModelConfig,
        side: Side,
        batch_size: usize,
        columns: &[HostColumn<'_>],
        device: &Device,
    ) -> Result<Self, ModelError> {
        let specs: Vec<_> = config.side_features(side).collect();
        if specs.len() != columns.len() {
            return Err(ModelError::Batch {
                side,
                feature: "columns".into(),
                problem: format!("expected {} columns, got {}", specs.len(), columns.len()),
            });
        }
        let mut tensors = Vec::with_capacity(columns.len());
        for (spec, column) in specs.iter().zip(columns) {
            let bad = |problem: String| ModelError::Batch {
                side,
                feature: spec.name.clone(),
                problem,
            };
            let tensor = match (spec.kind, column) {
                (FeatureKind::Categorical { .. }, HostColumn::Ids(ids)) => {
                    if ids.len() != batch_size {
                        return Err(bad(format!("expected {batch_size} ids, got {}", ids.len())));
                    }
                    Tensor::from_slice(ids, batch_size, device)?
                }
                (FeatureKind::MultiCategorical { max_len, .. }, HostColumn::Ids(ids)) => {
                    if ids.len() != batch_size * max_len {
                        return Err(bad(format!(
                            "expected {batch_size} x {max_len} ids, got {}",
                            ids.len()
                        )));
                    }
                    Tensor::from_slice(ids, (batch_size, max_len), device)?
                }
                (FeatureKind::Dense { dim }, HostColumn::Dense(values)) => {
                    if values.len() != batch_size * dim {
                        return Err(bad(format!(
                            "expected {batch_size} x {dim} floats, got {}",
                            values.len()
                        )));
                    }
                    Tensor::from_slice(values, (batch_size, dim), device)?
                }
                (kind, _) => return Err(bad(format!("column kind does not match {kind:?}"))),
            };
            tensors.push(tensor);
        }
        Ok(SideBatch { columns: tensors })
    }

    /// Number of examples (the first dimension of the first column), `None` without columns.
    pub fn batch_size(&self) -> Option<usize> {
        self.columns.first().and_then(|c| c.dims().first().copied())
    }
}
