//! The index file: one file, memory-mapped when loaded.
//!
//! ```text
//! "DSSMHNSW"  u32 little-endian header length  header (JSON)  zero padding to 4 KiB
//! sections, each starting at a multiple of 64 bytes:
//!   ids u32[n] | vectors f32[n * dim] | extra f32[n] | levels u8[n] | upper_start u32[n + 1]
//!   | level0 u32[n * (2m + 1)] | upper u32[upper_start[n] * (m + 1)]
//! ```
//! The header holds the parameters, the entry point, the section offsets, the xxh3 checksum of the
//! embeddings the graph was built from (ids and vectors, see [`super::embeddings_checksum`]) and the
//! xxh3 checksum of everything after the header. Loading verifies that checksum and every link, so a
//! truncated or altered file is refused before it is searched.

use super::HnswConfig;
use crate::embeddings::temporary_sibling;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::hash::Hasher;
use std::io::Write;
use std::path::Path;
use twox_hash::XxHash3_64;

const MAGIC: &[u8; 8] = b"DSSMHNSW";
const FORMAT_VERSION: u32 = 2;
const DATA_ALIGN: usize = 4096;
const SECTION_ALIGN: usize = 64;
/// Section names, in file order.
pub(crate) const SECTIONS: [&str; 7] = [
    "ids",
    "vectors",
    "extra",
    "levels",
    "upper_start",
    "level0",
    "upper",
];

/// What the header of an index file says.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Header {
    pub(crate) format_version: u32,
    pub(crate) config: HnswConfig,
    pub(crate) items: usize,
    pub(crate) dim: usize,
    pub(crate) entry: u32,
    pub(crate) max_level: usize,
    pub(crate) max_norm_sq: f32,
    /// xxh3-64 of the embeddings the graph was built from, as 16 hex digits.
    pub(crate) embeddings_xxh3: String,
    /// xxh3-64 of the file after the header, as 16 hex digits.
    pub(crate) payload_xxh3: String,
    /// Byte ranges of the sections, in [`SECTIONS`] order.
    pub(crate) sections: Vec<[usize; 2]>,
}

fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// Byte ranges of sections of the given lengths, starting at `start`.
fn layout(start: usize, lengths: &[usize]) -> Vec<[usize; 2]> {
    let mut at = start;
    lengths
        .iter()
        .map(|&len| {
            let range = [at, at + len];
            at = round_up(at + len, SECTION_ALIGN);
            range
        })
        .collect()
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

/// Writes `sections` (raw bytes, in [`SECTIONS`] order) under `header` to `path`, through a temporary
/// sibling renamed into place; `header.sections` and `header.payload_xxh3` are filled in here.
pub(crate) fn write(path: &Path, mut header: Header, sections: &[&[u8]]) -> Result<()> {
    header.format_version = FORMAT_VERSION;
    let lengths: Vec<usize> = sections.iter().map(|s| s.len()).collect();
    // The header's length depends on the offsets it lists; a generous fixed start keeps it simple.
    let probe = {
        header.sections = layout(0, &lengths);
        header.payload_xxh3 = "0".repeat(16);
        serde_json::to_vec(&header).map_err(|e| malformed(path, e.to_string()))?
    };
    let data_start = round_up(12 + probe.len() + 1024, DATA_ALIGN);
    header.sections = layout(data_start, &lengths);
    let mut hasher = XxHash3_64::with_seed(0);
    let mut at = data_start;
    for (section, range) in sections.iter().zip(&header.sections) {
        hasher.write(&vec![0u8; range[0] - at]);
        hasher.write(section);
        at = range[1];
    }
    header.payload_xxh3 = format!("{:016x}", hasher.finish());
    let json = serde_json::to_vec(&header).map_err(|e| malformed(path, e.to_string()))?;
    if 12 + json.len() > data_start {
        return Err(malformed(path, "the header outgrew its space".into()));
    }
    let tmp = temporary_sibling(path);
    let result = (|| {
        let file = std::fs::File::create(&tmp).map_err(io_error("create", &tmp))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut put = |bytes: &[u8]| out.write_all(bytes).map_err(io_error("write", &tmp));
        put(MAGIC)?;
        put(&(json.len() as u32).to_le_bytes())?;
        put(&json)?;
        let mut at = 12 + json.len();
        for (section, range) in sections.iter().zip(&header.sections) {
            put(&vec![0u8; range[0] - at])?;
            put(section)?;
            at = range[1];
        }
        let file = out.into_inner().map_err(|e| Error::Io {
            action: "write",
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_error("sync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io_error("rename into place", path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A mapped index file whose header and checksum were verified.
pub(crate) struct Mapped {
    pub(crate) map: memmap2::Mmap,
    pub(crate) header: Header,
}

impl Mapped {
    /// The bytes of section `i` (in [`SECTIONS`] order).
    pub(crate) fn section(&self, i: usize) -> &[u8] {
        let [start, end] = self.header.sections[i];
        &self.map[start..end]
    }
}

/// Maps `path` and verifies its magic, version, layout and payload checksum.
pub(crate) fn map(path: &Path) -> Result<Mapped> {
    if cfg!(target_endian = "big") {
        return Err(malformed(
            path,
            "index files are little-endian; this machine is not".into(),
        ));
    }
    let file = std::fs::File::open(path).map_err(io_error("open", path))?;
    // SAFETY: the map is read-only; the file must not be truncated or rewritten while it is in use,
    // which the writer guarantees by replacing files through a rename, never in place.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_error("map", path))?;
    if map.len() < 12 || &map[..8] != MAGIC {
        return Err(malformed(path, "not an HNSW index file (bad magic)".into()));
    }
    let json_len = u32::from_le_bytes(map[8..12].try_into().expect("4 bytes")) as usize;
    let json = map.get(12..12 + json_len).ok_or_else(|| {
        corrupt(
            path,
            format!("header of {json_len} bytes runs past the end"),
        )
    })?;
    let header: Header =
        serde_json::from_slice(json).map_err(|e| corrupt(path, format!("header: {e}")))?;
    if header.format_version != FORMAT_VERSION {
        return Err(malformed(
            path,
            format!(
                "format version {}, expected {FORMAT_VERSION}",
                header.format_version
            ),
        ));
    }
    let data_start = header.sections.first().map_or(map.len(), |s| s[0]);
    let sane = header.sections.len() == SECTIONS.len()
        && data_start >= 12 + json_len
        && header
            .sections
            .iter()
            .all(|[s, e]| s <= e && *e <= map.len() && s % SECTION_ALIGN == 0);
    if !sane {
        return Err(corrupt(
            path,
            format!(
                "sections {:?} do not fit a file of {} bytes",
                header.sections,
                map.len()
            ),
        ));
    }
    let end = header.sections.last().map_or(data_start, |s| s[1]);
    let found = format!("{:016x}", XxHash3_64::oneshot(&map[data_start..end]));
    if found != header.payload_xxh3 {
        return Err(corrupt(
            path,
            format!("checksum {found}, the header says {}", header.payload_xxh3),
        ));
    }
    Ok(Mapped { map, header })
}

pub(crate) fn corrupt(path: &Path, reason: String) -> Error {
    Error::HnswCorrupt {
        path: path.to_path_buf(),
        reason,
    }
}

fn malformed(path: &Path, message: String) -> Error {
    Error::HnswFile {
        path: path.to_path_buf(),
        message,
    }
}

/// Byte range helper for callers that check section lengths.
pub(crate) fn expect_len(path: &Path, name: &str, bytes: &[u8], len: usize) -> Result<()> {
    if bytes.len() == len {
        Ok(())
    } else {
        Err(corrupt(
            path,
            format!("section {name} has {} bytes, expected {len}", bytes.len()),
        ))
    }
}
