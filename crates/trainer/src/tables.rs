//! From the dataset folder to model inputs: the model config built from the schema and the
//! `[features]` section, and the in-memory feature tables batches are gathered from.

use candle_core::Device;
use dssm_data::{Dataset, FeatureValues};
use dssm_model::{
    Activation, Branch, FeatureKind, FeatureSpec, HostColumn, ModelConfig, Pooling, SenetConfig,
    SequenceConfig, SequenceItems, Side, SideBatch, Similarity, Squeeze, Temperature, TowerConfig,
};

use crate::config::{
    ActivationKind, BranchKind, ConfigError, PoolingKind, RunConfig, SequenceItemsKind,
    SequenceSection, SimilarityKind, SqueezeKind, TowerSection,
};
use crate::error::TrainError;
use crate::history::{HISTORY_FEATURE, RECENT_FEATURE};

/// The feature names each tower uses: the `[features]` lists, or every feature of that side in
/// the schema.
pub(crate) fn selected_features(
    config: &RunConfig,
    dataset: &Dataset,
    side: Side,
) -> Result<Vec<String>, TrainError> {
    let (key, list, data_side) = match side {
        Side::User => (
            "features.user",
            &config.features.user,
            dssm_data::Side::User,
        ),
        Side::Item => (
            "features.item",
            &config.features.item,
            dssm_data::Side::Item,
        ),
    };
    let available: Vec<String> = dataset
        .schema
        .side(data_side)
        .map(|f| f.name.clone())
        .collect();
    match list {
        None => Ok(available),
        Some(names) => {
            for name in names {
                if !available.contains(name) {
                    return Err(ConfigError::Invalid {
                        key: key.to_string(),
                        value: format!("{name:?}"),
                        expected: format!(
                            "{} features of the dataset schema: {}",
                            side.as_str(),
                            available.join(", ")
                        ),
                    }
                    .into());
                }
            }
            Ok(names.clone())
        }
    }
}

fn tower(section: &TowerSection) -> TowerConfig {
    TowerConfig {
        hidden: section.hidden.clone(),
        activation: match section.activation {
            ActivationKind::Relu => Activation::Relu,
            ActivationKind::LeakyRelu => Activation::LeakyRelu,
            ActivationKind::Tanh => Activation::Tanh,
            ActivationKind::Gelu => Activation::Gelu,
        },
        dropout: section.dropout as f32,
        l2_normalize: section.l2_normalize,
        branches: section
            .branches
            .iter()
            .map(|b| match b {
                BranchKind::Mlp => Branch::Mlp,
                BranchKind::Cross => Branch::Cross,
                BranchKind::Fm => Branch::Fm,
            })
            .collect(),
        cross_layers: section.cross_layers,
    }
}

/// Builds the model config: features of the schema selected by `[features]` (vocabulary sizes
/// from the schema), towers, SENet (none when `model.senet.enabled` is false), similarity and
/// temperature.
pub(crate) fn model_config(
    config: &RunConfig,
    dataset: &Dataset,
) -> Result<ModelConfig, TrainError> {
    let mut features = Vec::new();
    for side in [Side::User, Side::Item] {
        for name in selected_features(config, dataset, side)? {
            let Some(spec) = dataset.schema.features.iter().find(|f| f.name == name) else {
                continue;
            };
            let kind = match spec.kind {
                dssm_data::FeatureKind::Categorical => FeatureKind::Categorical {
                    vocab_size: spec.vocab_size,
                },
                dssm_data::FeatureKind::MultiCategorical => FeatureKind::MultiCategorical {
                    vocab_size: spec.vocab_size,
                    max_len: spec.max_len.unwrap_or(1).max(1),
                    pooling: match config.features.pooling {
                        PoolingKind::Mean => Pooling::Mean,
                        PoolingKind::Sum => Pooling::Sum,
                    },
                },
                dssm_data::FeatureKind::Dense => FeatureKind::Dense {
                    dim: spec.dim.unwrap_or(1).max(1),
                },
            };
            features.push(FeatureSpec {
                name: name.clone(),
                side,
                kind,
                embedding_dim: config.features.embedding_dims.get(&name).copied(),
            });
        }
    }
    for (name, len) in [
        (HISTORY_FEATURE, config.features.history_len),
        (RECENT_FEATURE, config.features.recent_len),
    ] {
        if len > 0 {
            features.push(FeatureSpec {
                name: name.to_string(),
                side: Side::User,
                kind: FeatureKind::MultiCategorical {
                    vocab_size: dataset.items.movie_id.len() + 1,
                    max_len: len,
                    pooling: Pooling::Mean,
                },
                embedding_dim: config.features.embedding_dims.get(name).copied(),
            });
        }
    }
    for name in config.features.embedding_dims.keys() {
        if !features.iter().any(|f| &f.name == name) {
            return Err(ConfigError::Invalid {
                key: format!("features.embedding_dims.{name}"),
                value: format!("{name:?}"),
                expected: "the name of a feature the towers use".to_string(),
            }
            .into());
        }
    }
    let m = &config.model;
    let model = ModelConfig {
        features,
        embedding_dim: config.features.embedding_dim,
        user_tower: tower(&m.user_tower),
        item_tower: tower(&m.item_tower),
        senet: m.senet.enabled.then_some(SenetConfig {
            reduction: m.senet.reduction,
            squeeze: match m.senet.squeeze {
                SqueezeKind::Mean => Squeeze::Mean,
                SqueezeKind::Max => Squeeze::Max,
            },
        }),
        similarity: match m.similarity {
            SimilarityKind::Dot => Similarity::Dot,
            SimilarityKind::Cosine => Similarity::Cosine,
        },
        temperature: if m.learn_temperature {
            Temperature::Learned {
                init: m.temperature as f32,
            }
        } else {
            Temperature::Fixed(m.temperature as f32)
        },
        sequence: m.sequence.enabled.then(|| sequence(&m.sequence)),
    };
    model.check().map_err(|e| ConfigError::Invalid {
        key: format!("model ({})", e.field),
        value: "(derived model config)".to_string(),
        expected: e.problem.clone(),
    })?;
    Ok(model)
}

fn sequence(section: &SequenceSection) -> SequenceConfig {
    SequenceConfig {
        max_len: section.max_len,
        blocks: section.blocks,
        heads: section.heads,
        dropout: section.dropout as f32,
        items: match section.items {
            SequenceItemsKind::Id => SequenceItems::Id,
            SequenceItemsKind::Tower => SequenceItems::Tower,
        },
        id_feature: section.id_feature.clone(),
        user_features: section.user_features,
        ffn_multiple: section.ffn_multiple,
    }
}

/// One feature column: `width` ids (1 for categorical) or floats (dense) per row, row-major.
#[derive(Debug, Clone)]
struct IdColumn {
    width: usize,
    values: Vec<u32>,
    /// Dense features: the floats (`values` is then empty).
    floats: Option<Vec<f32>>,
    /// The `history` or `recent` feature: filled per query by [`SideTable::expand`].
    from_history: bool,
}

impl IdColumn {
    fn ids(width: usize, values: Vec<u32>, from_history: bool) -> Self {
        Self {
            width,
            values,
            floats: None,
            from_history,
        }
    }

    fn len(&self) -> usize {
        self.floats.as_ref().map_or(self.values.len(), Vec::len)
    }
}

/// The encoded features of one side's table, in tower order.
#[derive(Debug, Clone)]
pub(crate) struct SideTable {
    side: Side,
    rows: usize,
    columns: Vec<IdColumn>,
}

/// Reusable host buffers for gathering one batch of one side.
#[derive(Debug, Default)]
pub(crate) struct GatherBuffers {
    columns: Vec<Vec<u32>>,
    floats: Vec<Vec<f32>>,
}

impl SideTable {
    /// Copies the columns the model uses from the dataset's users or items table.
    pub(crate) fn new(
        dataset: &Dataset,
        model: &ModelConfig,
        side: Side,
    ) -> Result<Self, TrainError> {
        let table = match side {
            Side::User => &dataset.users.features,
            Side::Item => &dataset.items.features,
        };
        let mut columns = Vec::new();
        for spec in model.side_features(side) {
            if let (
                Side::User,
                HISTORY_FEATURE | RECENT_FEATURE,
                FeatureKind::MultiCategorical { max_len, .. },
            ) = (side, spec.name.as_str(), spec.kind)
            {
                // Filled per query by `expand`; empty (all padding) here.
                columns.push(IdColumn::ids(max_len, vec![0; table.rows * max_len], true));
                continue;
            }
            let column = table.get(&spec.name).ok_or_else(|| TrainError::Dataset {
                path: dataset.dir.clone(),
                message: format!("the {side} table has no column feature.{}", spec.name),
            })?;
            let column = match (&column.values, spec.kind) {
                (FeatureValues::Categorical(values), FeatureKind::Categorical { .. }) => {
                    IdColumn::ids(1, values.clone(), false)
                }
                (
                    FeatureValues::Multi { max_len, values },
                    FeatureKind::MultiCategorical { max_len: m, .. },
                ) if *max_len == m => IdColumn::ids(m, values.clone(), false),
                (FeatureValues::Dense { dim, values }, FeatureKind::Dense { dim: d })
                    if *dim == d =>
                {
                    IdColumn {
                        width: d,
                        values: Vec::new(),
                        floats: Some(values.clone()),
                        from_history: false,
                    }
                }
                _ => {
                    return Err(TrainError::Dataset {
                        path: dataset.dir.clone(),
                        message: format!(
                            "column feature.{} does not match its schema entry",
                            spec.name
                        ),
                    });
                }
            };
            if column.len() != table.rows * column.width {
                return Err(TrainError::Dataset {
                    path: dataset.dir.clone(),
                    message: format!(
                        "column feature.{} has {} values for {} rows of width {}",
                        spec.name,
                        column.len(),
                        table.rows,
                        column.width
                    ),
                });
            }
            columns.push(column);
        }
        Ok(Self {
            side,
            rows: table.rows,
            columns,
        })
    }

    /// Rows in the table.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// A table whose row `j` is row `rows[j]` of this one with the `history` column replaced by
    /// `history[j * len..(j + 1) * len]` (most recent first) and the `recent` column, when
    /// present, by the first `recent_len` of those.
    pub(crate) fn expand(&self, rows: &[u32], history: &[u32]) -> SideTable {
        let len = history.len() / rows.len().max(1);
        let columns = self
            .columns
            .iter()
            .map(|column| {
                let w = column.width;
                if let Some(floats) = &column.floats {
                    let mut picked = Vec::with_capacity(rows.len() * w);
                    for &r in rows {
                        picked.extend_from_slice(&floats[r as usize * w..(r as usize + 1) * w]);
                    }
                    return IdColumn {
                        width: w,
                        values: Vec::new(),
                        floats: Some(picked),
                        from_history: false,
                    };
                }
                let mut values = Vec::with_capacity(rows.len() * w);
                if column.from_history {
                    for row in history.chunks_exact(len.max(1)) {
                        values.extend_from_slice(&row[..w.min(len)]);
                    }
                } else {
                    for &r in rows {
                        values.extend_from_slice(
                            &column.values[r as usize * w..(r as usize + 1) * w],
                        );
                    }
                }
                IdColumn::ids(w, values, column.from_history)
            })
            .collect();
        SideTable {
            side: self.side,
            rows: rows.len(),
            columns,
        }
    }

    /// Gathers `rows` into `buffers` (reused across batches) and builds the side batch.
    pub(crate) fn batch(
        &self,
        model: &ModelConfig,
        rows: &[u32],
        buffers: &mut GatherBuffers,
        device: &Device,
    ) -> Result<SideBatch, TrainError> {
        let host = self.gather_host(rows, buffers);
        SideBatch::from_host(model, self.side, rows.len(), &host, device).map_err(TrainError::model)
    }

    /// Gathers `rows` into `buffers`: one host column per feature in tower order, dense
    /// features as floats.
    pub(crate) fn gather_host<'b>(
        &self,
        rows: &[u32],
        buffers: &'b mut GatherBuffers,
    ) -> Vec<HostColumn<'b>> {
        self.fill(rows, buffers);
        let GatherBuffers { columns, floats } = buffers;
        self.columns
            .iter()
            .zip(columns.iter().zip(floats.iter()))
            .map(|(column, (ids, floats))| match column.floats {
                Some(_) => HostColumn::Dense(floats),
                None => HostColumn::Ids(ids),
            })
            .collect()
    }

    /// Gathers `rows` into `buffers` (reused across batches): one id slice per column, in tower
    /// order (categorical: one id per row; multi-categorical: `max_len` per row). Dense columns
    /// give an empty slice: the CPU engine, the only caller, refuses dense features.
    pub(crate) fn gather<'b>(
        &self,
        rows: &[u32],
        buffers: &'b mut GatherBuffers,
    ) -> Vec<&'b [u32]> {
        self.fill(rows, buffers);
        buffers.columns.iter().map(Vec::as_slice).collect()
    }

    fn fill(&self, rows: &[u32], buffers: &mut GatherBuffers) {
        buffers.columns.resize_with(self.columns.len(), Vec::new);
        buffers.floats.resize_with(self.columns.len(), Vec::new);
        let targets = buffers.columns.iter_mut().zip(&mut buffers.floats);
        for (column, (buffer, floats)) in self.columns.iter().zip(targets) {
            buffer.clear();
            floats.clear();
            if let Some(values) = &column.floats {
                let w = column.width;
                for &r in rows {
                    floats.extend_from_slice(&values[r as usize * w..(r as usize + 1) * w]);
                }
            } else if column.width == 1 {
                buffer.extend(rows.iter().map(|&r| column.values[r as usize]));
            } else {
                buffer.reserve(rows.len() * column.width);
                for &r in rows {
                    let start = r as usize * column.width;
                    buffer.extend_from_slice(&column.values[start..start + column.width]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_fills_history_and_its_most_recent_prefix() {
        // Two user rows: a categorical column, then `history` (width 3) and `recent` (width 2).
        let table = SideTable {
            side: Side::User,
            rows: 2,
            columns: vec![
                IdColumn::ids(1, vec![10, 11], false),
                IdColumn::ids(3, vec![0; 6], true),
                IdColumn::ids(2, vec![0; 4], true),
            ],
        };
        // Queries: user row 1, then user row 0; histories most recent first.
        let expanded = table.expand(&[1, 0], &[7, 8, 9, 4, 0, 0]);
        assert_eq!(expanded.rows, 2);
        assert_eq!(expanded.columns[0].values, [11, 10]);
        assert_eq!(expanded.columns[1].values, [7, 8, 9, 4, 0, 0]);
        assert_eq!(expanded.columns[2].values, [7, 8, 4, 0]);
    }
}
