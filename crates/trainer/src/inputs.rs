//! What a run reads from the dataset folder: the dataset (checked against the config's protocol),
//! the model config it implies, both sides' feature tables and the splits' rows.

use std::path::Path;

use candle_core::Device;
use dssm_data::{Dataset, Split};
use dssm_model::{ModelConfig, Side};

use crate::config::{Protocol, RunConfig};
use crate::error::TrainError;
use crate::history::TimedRows;
use crate::provenance::checksum;
use crate::report::DatasetInfo;
use crate::tables::SideTable;

/// Everything a training or evaluation run needs in memory.
pub(crate) struct Inputs {
    pub(crate) dataset: Dataset,
    pub(crate) model_config: ModelConfig,
    pub(crate) users: SideTable,
    pub(crate) items: SideTable,
    pub(crate) device: Device,
}

impl Inputs {
    /// The tables of `dataset` for `config`; the model config is derived from both unless given
    /// (a loaded checkpoint's).
    pub(crate) fn new(
        config: &RunConfig,
        model_config: Option<ModelConfig>,
        dataset: Dataset,
    ) -> Result<Self, TrainError> {
        let model_config = match model_config {
            Some(c) => c,
            None => crate::tables::model_config(config, &dataset)?,
        };
        let users = SideTable::new(&dataset, &model_config, Side::User)?;
        let items = SideTable::new(&dataset, &model_config, Side::Item)?;
        let device = dssm_model::parse_device(&config.train.device).map_err(TrainError::model)?;
        Ok(Self {
            dataset,
            model_config,
            users,
            items,
            device,
        })
    }

    /// The rows of `split`, checked against both tables.
    pub(crate) fn split(&self, split: Split) -> Result<SplitRows, TrainError> {
        split_rows(&self.dataset, split, self.users.rows(), self.items.rows())
    }
}

/// Split rows held in memory.
pub(crate) struct SplitRows {
    pub(crate) users: Vec<u32>,
    pub(crate) items: Vec<u32>,
    pub(crate) labels: Vec<u8>,
    pub(crate) timestamps: Vec<Option<i64>>,
    pub(crate) lines: Vec<u32>,
}

impl SplitRows {
    /// The rows with their time order, for the history feature.
    pub(crate) fn timed(&self) -> TimedRows<'_> {
        TimedRows {
            users: &self.users,
            items: &self.items,
            timestamps: &self.timestamps,
            lines: &self.lines,
        }
    }
}

/// The rows of `split`; an error when one indexes outside a table of `users` or `items` rows.
pub(crate) fn split_rows(
    dataset: &Dataset,
    split: Split,
    users: usize,
    items: usize,
) -> Result<SplitRows, TrainError> {
    let rows = dataset
        .interactions(split)
        .map_err(|e| TrainError::Dataset {
            path: dataset.dir.clone(),
            message: e.to_string(),
        })?;
    let bad_user = rows.user_row.iter().any(|&u| u as usize >= users);
    let bad_item = rows.item_row.iter().any(|&i| i as usize >= items);
    if bad_user || bad_item {
        return Err(TrainError::Dataset {
            path: dataset.dir.clone(),
            message: format!(
                "{} rows index outside the users or items table",
                split.name()
            ),
        });
    }
    Ok(SplitRows {
        users: rows.user_row,
        items: rows.item_row,
        labels: rows.label,
        timestamps: rows.timestamp,
        lines: rows.line,
    })
}

/// Opens the dataset folder; an error when it was prepared for another protocol.
pub(crate) fn open_dataset(path: &Path, protocol: Protocol) -> Result<Dataset, TrainError> {
    let dataset = Dataset::open(path).map_err(|e| TrainError::Dataset {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if dataset.manifest.protocol.name() != protocol.to_string() {
        return Err(TrainError::Dataset {
            path: path.to_path_buf(),
            message: format!(
                "prepared for protocol {}, but data.protocol is {protocol}",
                dataset.manifest.protocol
            ),
        });
    }
    Ok(dataset)
}

/// The dataset as a run records it (name, protocol, split seed, manifest checksum).
pub(crate) fn dataset_info(dataset: &Dataset, path: &Path) -> Result<DatasetInfo, TrainError> {
    let manifest_path = path.join("manifest.json");
    let bytes = std::fs::read(&manifest_path).map_err(TrainError::io("read", &manifest_path))?;
    Ok(DatasetInfo {
        path: path.to_path_buf(),
        name: dataset.manifest.dataset.clone(),
        protocol: dataset.manifest.protocol.name().to_string(),
        split_seed: Some(dataset.manifest.seed),
        manifest_checksum: checksum(&bytes),
    })
}
