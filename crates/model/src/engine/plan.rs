//! Where each tower's pieces live in the engine's flat parameter buffer, read off the model's
//! config and its named variables, and which configurations the engine can run.

use std::ops::Range;

use crate::config::{FeatureKind, ModelConfig, Pooling, Side, Similarity, Squeeze, Temperature};
use crate::error::ModelError;
use crate::ops::Act;

/// One trainable tensor inside the flat buffer, in the order of [`crate::Dssm::named_vars`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSlot {
    /// The tensor's name, as saved.
    pub name: String,
    /// Where its values start in the flat buffer.
    pub offset: usize,
    /// How many values it has.
    pub len: usize,
}

impl ParamSlot {
    /// `offset..offset + len`.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// One (multi-)categorical field of a tower.
#[derive(Debug, Clone)]
pub(crate) struct FieldPlan {
    pub(crate) name: String,
    /// Table row of the field's id 0.
    pub(crate) offset: usize,
    pub(crate) vocab: u32,
    /// Ids per example: 1, or `max_len` for a multi-valued field.
    pub(crate) width: usize,
    /// `None` for a categorical field.
    pub(crate) pooling: Option<Pooling>,
}

/// SENet's two small layers; offsets are relative to the tower's dense region.
#[derive(Debug, Clone)]
pub(crate) struct SenetPlan {
    pub(crate) hidden: usize,
    pub(crate) squeeze: Squeeze,
    pub(crate) fc1: LayerPlan,
    pub(crate) fc2: LayerPlan,
}

/// A linear layer `[output x input]`; offsets are relative to the tower's dense region.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerPlan {
    pub(crate) input: usize,
    pub(crate) output: usize,
    pub(crate) weight: usize,
    pub(crate) bias: usize,
}

impl LayerPlan {
    /// The layer's weight `[output x input]` and bias inside the tower's dense region.
    pub(crate) fn weights<'a>(&self, dense: &'a [f32]) -> (&'a [f32], &'a [f32]) {
        (
            &dense[self.weight..self.weight + self.input * self.output],
            &dense[self.bias..self.bias + self.output],
        )
    }
}

/// One tower as the engine runs it.
#[derive(Debug, Clone)]
pub(crate) struct TowerPlan {
    pub(crate) side: Side,
    pub(crate) fields: Vec<FieldPlan>,
    /// Embedding width of every field.
    pub(crate) dim: usize,
    /// The side's embedding table in the flat buffer.
    pub(crate) table: Range<usize>,
    /// SENet and MLP parameters, contiguous in the flat buffer.
    pub(crate) dense: Range<usize>,
    pub(crate) senet: Option<SenetPlan>,
    pub(crate) layers: Vec<LayerPlan>,
    pub(crate) act: Act,
    pub(crate) dropout: f32,
    pub(crate) l2_normalize: bool,
}

impl TowerPlan {
    /// Width of the field embeddings laid side by side, the first layer's input.
    pub(crate) fn input_width(&self) -> usize {
        self.fields.len() * self.dim
    }

    /// Ids per example over all fields.
    pub(crate) fn slots(&self) -> usize {
        self.fields.iter().map(|f| f.width).sum()
    }

    /// Width of the tower's output.
    pub(crate) fn output_width(&self) -> usize {
        self.layers.last().map_or(0, |l| l.output)
    }

    /// Widest activation of the tower (input included).
    pub(crate) fn max_width(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.output)
            .chain([self.input_width()])
            .max()
            .unwrap_or(0)
    }
}

/// The error for something the engine cannot run.
pub(crate) fn unsupported(problem: impl Into<String>) -> ModelError {
    ModelError::Unsupported {
        what: "the CPU engine",
        problem: problem.into(),
    }
}

/// Checks that the engine can run `config`: (multi-)categorical features of one embedding width
/// per side, dot similarity and a fixed temperature. Anything else trains through Candle.
pub fn check_supported(config: &ModelConfig) -> Result<(), ModelError> {
    config.check()?;
    if config.similarity != Similarity::Dot {
        return Err(unsupported(
            "cosine similarity (use l2_normalize in the towers)",
        ));
    }
    if let Temperature::Learned { .. } = config.temperature {
        return Err(unsupported("a learned temperature"));
    }
    if config.sequence.is_some() {
        return Err(unsupported("the sequence user tower"));
    }
    if config.is_parallel() {
        return Err(unsupported(format!(
            "parallel towers (branches {:?})",
            config.user_tower.branches
        )));
    }
    for side in [Side::User, Side::Item] {
        let mut dims = config
            .side_features(side)
            .map(|f| f.effective_dim(config.embedding_dim));
        let first = dims.next();
        if dims.any(|d| Some(d) != first) {
            return Err(unsupported(format!(
                "{side} features of different embedding widths"
            )));
        }
        if let Some(f) = config
            .side_features(side)
            .find(|f| matches!(f.kind, FeatureKind::Dense { .. }))
        {
            return Err(unsupported(format!("the dense feature `{}`", f.name)));
        }
    }
    Ok(())
}

/// The slot named `name`.
fn slot<'a>(slots: &'a [ParamSlot], name: &str) -> Result<&'a ParamSlot, ModelError> {
    slots
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| unsupported(format!("no variable `{name}`")))
}

/// Builds the plan of one tower; `slots` must come from a model built from `config`.
pub(crate) fn tower_plan(
    config: &ModelConfig,
    side: Side,
    slots: &[ParamSlot],
) -> Result<TowerPlan, ModelError> {
    let prefix = side.as_str();
    let mut fields = Vec::new();
    let mut rows = 0usize;
    for spec in config.side_features(side) {
        let (vocab, width, pooling) = match spec.kind {
            FeatureKind::Categorical { vocab_size } => (vocab_size, 1, None),
            FeatureKind::MultiCategorical {
                vocab_size,
                max_len,
                pooling,
            } => (vocab_size, max_len, Some(pooling)),
            FeatureKind::Dense { .. } => return Err(unsupported("dense features")),
        };
        fields.push(FieldPlan {
            name: spec.name.clone(),
            offset: rows,
            vocab: vocab as u32,
            width,
            pooling,
        });
        rows += vocab;
    }
    let dim = config
        .side_features(side)
        .next()
        .map_or(config.embedding_dim, |f| {
            f.effective_dim(config.embedding_dim)
        });
    let table = slot(slots, &format!("{prefix}.embedding"))?;
    if table.len != rows * dim {
        return Err(unsupported(format!(
            "`{}` has {} values for {rows} rows of {dim}",
            table.name, table.len
        )));
    }
    let dense_start = table.offset + table.len;
    let mut next = dense_start;
    // The dense parameters must follow the table in order, so one range covers them.
    let mut layer = |name: &str, input: usize, output: usize| -> Result<LayerPlan, ModelError> {
        let w = slot(slots, &format!("{name}.weight"))?;
        let b = slot(slots, &format!("{name}.bias"))?;
        if w.offset != next || w.len != input * output || b.offset != w.offset + w.len {
            return Err(unsupported(format!("`{name}` is not laid out as expected")));
        }
        next = b.offset + b.len;
        Ok(LayerPlan {
            input,
            output,
            weight: w.offset - dense_start,
            bias: b.offset - dense_start,
        })
    };
    let n_fields = fields.len();
    let senet = match &config.senet {
        Some(s) => {
            let hidden = (n_fields / s.reduction).max(1);
            Some(SenetPlan {
                hidden,
                squeeze: s.squeeze,
                fc1: layer(&format!("{prefix}.senet.fc1"), n_fields, hidden)?,
                fc2: layer(&format!("{prefix}.senet.fc2"), hidden, n_fields)?,
            })
        }
        None => None,
    };
    let tower = config.tower(side);
    let mut input = n_fields * dim;
    let mut layers = Vec::new();
    for (i, &width) in tower.hidden.iter().enumerate() {
        layers.push(layer(&format!("{prefix}.mlp.{i}"), input, width)?);
        input = width;
    }
    Ok(TowerPlan {
        side,
        fields,
        dim,
        table: table.range(),
        dense: dense_start..next,
        senet,
        layers,
        act: tower.activation.into(),
        dropout: tower.dropout,
        l2_normalize: tower.l2_normalize,
    })
}
