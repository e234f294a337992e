//! Reading MovieLens files from a folder, a zip archive or memory, and the optional download.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use crate::error::DataError;
use crate::raw::{self, RawData, SourceFile};

/// Which MovieLens layout the files follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// MovieLens-1M: users.dat, movies.dat, ratings.dat (`::`-separated).
    #[serde(rename = "ml-1m")]
    Ml1m,
    /// MovieLens-100K: u.user, u.item, u.data.
    #[serde(rename = "ml-100k")]
    Ml100k,
    /// The synthetic generator's output (ML-1M format).
    Synthetic,
}

impl DatasetKind {
    /// The name written in the manifest: `ml-1m`, `ml-100k` or `synthetic`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ml1m => "ml-1m",
            Self::Ml100k => "ml-100k",
            Self::Synthetic => "synthetic",
        }
    }

    /// The users, movies and ratings file names of this layout.
    pub fn file_names(self) -> [&'static str; 3] {
        match self {
            Self::Ml1m | Self::Synthetic => ["users.dat", "movies.dat", "ratings.dat"],
            Self::Ml100k => ["u.user", "u.item", "u.data"],
        }
    }
}

/// One named file held in memory.
#[derive(Debug, Clone)]
pub struct NamedBytes {
    /// Name used in errors and the manifest.
    pub name: String,
    /// Contents.
    pub bytes: Vec<u8>,
}

/// md5 of `bytes` as lowercase hex.
pub fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn source_file(f: &NamedBytes) -> SourceFile {
    SourceFile {
        name: f.name.clone(),
        md5: md5_hex(&f.bytes),
        bytes: f.bytes.len() as u64,
    }
}

/// `name`, md5 and size of a file, read in 1 MiB blocks.
pub(crate) fn file_source(path: &Path, name: String) -> Result<SourceFile, DataError> {
    let mut file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut hasher = Md5::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    let digest = hasher.finalize();
    Ok(SourceFile {
        name,
        md5: digest.iter().map(|b| format!("{b:02x}")).collect(),
        bytes,
    })
}

/// Parses the three files of `kind` (users, movies, ratings in that order) held in memory.
pub fn parse_files(kind: DatasetKind, files: [NamedBytes; 3]) -> Result<RawData, DataError> {
    let [users_file, movies_file, ratings_file] = &files;
    let (users, movies, sep): (_, _, &[u8]) = match kind {
        DatasetKind::Ml1m | DatasetKind::Synthetic => (
            raw::parse_users_ml1m(&users_file.name, &users_file.bytes)?,
            raw::parse_movies_ml1m(&movies_file.name, &movies_file.bytes)?,
            b"::",
        ),
        DatasetKind::Ml100k => (
            raw::parse_users_100k(&users_file.name, &users_file.bytes)?,
            raw::parse_movies_100k(&movies_file.name, &movies_file.bytes)?,
            b"\t",
        ),
    };
    let ratings = raw::parse_ratings(
        &ratings_file.name,
        &ratings_file.bytes,
        sep,
        &users,
        &movies,
    )?;
    Ok(RawData {
        users,
        movies,
        ratings,
        sources: files.iter().map(source_file).collect(),
    })
}

/// Reads the three files of `kind` from a folder.
pub fn read_folder(kind: DatasetKind, dir: &Path) -> Result<[NamedBytes; 3], DataError> {
    let read = |name: &str| -> Result<NamedBytes, DataError> {
        let path = dir.join(name);
        if !path.is_file() {
            return Err(DataError::MissingFile {
                file: name.to_string(),
                container: dir.display().to_string(),
            });
        }
        let bytes = fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        Ok(NamedBytes {
            name: path.display().to_string(),
            bytes,
        })
    };
    let [u, m, r] = kind.file_names();
    Ok([read(u)?, read(m)?, read(r)?])
}

/// Reads the three files of `kind` from a zip archive (entries such as `ml-1m/ratings.dat`,
/// `ml-100k/u.data`, or at the archive root). Also returns the archive's own checksum record.
pub fn read_zip(
    kind: DatasetKind,
    path: &Path,
) -> Result<([NamedBytes; 3], SourceFile), DataError> {
    let archive_bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
    let archive_record = SourceFile {
        name: path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into(),
        ),
        md5: md5_hex(&archive_bytes),
        bytes: archive_bytes.len() as u64,
    };
    let zip_err = |e: &dyn std::fmt::Display| DataError::Zip {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(&archive_bytes)).map_err(|e| zip_err(&e))?;
    let names: Vec<String> = archive
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| zip_err(&e))?;
    let mut read = |file: &str| -> Result<NamedBytes, DataError> {
        let suffix = format!("/{file}");
        let entry = names
            .iter()
            .filter(|n| *n == file || n.ends_with(&suffix))
            .min_by_key(|n| n.len())
            .ok_or_else(|| DataError::MissingFile {
                file: file.to_string(),
                container: path.display().to_string(),
            })?
            .clone();
        let mut f = archive.by_name(&entry).map_err(|e| zip_err(&e))?;
        let mut bytes = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut bytes).map_err(|e| zip_err(&e))?;
        Ok(NamedBytes {
            name: format!("{}!{entry}", archive_record.name),
            bytes,
        })
    };
    let [u, m, r] = kind.file_names();
    Ok(([read(u)?, read(m)?, read(r)?], archive_record))
}

/// Where MovieLens-1M is downloaded from.
pub const ML1M_URL: &str = "https://files.grouplens.org/datasets/movielens/ml-1m.zip";
/// Size of the official ml-1m.zip in bytes.
pub const ML1M_ZIP_BYTES: u64 = 5_917_549;
/// md5 of the official ml-1m.zip.
pub const ML1M_ZIP_MD5: &str = "c4d9eecfca2ab87c1945afe126590906";

/// Checks that `path` is the official ml-1m.zip (size and md5).
pub fn verify_ml1m_zip(path: &Path) -> Result<(), DataError> {
    let bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
    verify_bytes(path, &bytes, ML1M_ZIP_BYTES, ML1M_ZIP_MD5)
}

pub(crate) fn verify_bytes(
    path: &Path,
    bytes: &[u8],
    expected_bytes: u64,
    expected_md5: &str,
) -> Result<(), DataError> {
    let md5 = md5_hex(bytes);
    if bytes.len() as u64 != expected_bytes || md5 != expected_md5 {
        return Err(DataError::Checksum {
            path: path.to_path_buf(),
            expected_bytes,
            expected_md5: expected_md5.to_string(),
            actual_bytes: bytes.len() as u64,
            actual_md5: md5,
        });
    }
    Ok(())
}

/// Makes sure a verified ml-1m.zip lies at `zip_path`, downloading it when absent.
///
/// An existing file is verified (size and md5) and used. Otherwise the zip is fetched from
/// [`ML1M_URL`] with a 10 s connect timeout into a temporary sibling, verified, then renamed into
/// place. Offline, this fails at once with [`DataError::Download`], whose message says where to
/// place the zip by hand.
pub fn ensure_ml1m_zip(zip_path: &Path) -> Result<PathBuf, DataError> {
    if zip_path.is_file() {
        verify_ml1m_zip(zip_path)?;
        return Ok(zip_path.to_path_buf());
    }
    download_ml1m(zip_path)?;
    Ok(zip_path.to_path_buf())
}

#[cfg(feature = "download")]
fn download_ml1m(zip_path: &Path) -> Result<(), DataError> {
    use std::time::Duration;
    let fail = |message: String| DataError::Download {
        url: ML1M_URL.to_string(),
        message,
        manual_path: zip_path.to_path_buf(),
    };
    if let Some(parent) = zip_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_resolve(Some(Duration::from_secs(10)))
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into();
    tracing::info!(url = ML1M_URL, "downloading MovieLens-1M");
    let mut response = agent
        .get(ML1M_URL)
        .call()
        .map_err(|e| fail(e.to_string()))?;
    let bytes = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .map_err(|e| fail(e.to_string()))?;
    let tmp = zip_path.with_extension(format!("zip.part-{}", std::process::id()));
    fs::write(&tmp, &bytes).map_err(|e| DataError::io(&tmp, e))?;
    if let Err(e) = verify_bytes(&tmp, &bytes, ML1M_ZIP_BYTES, ML1M_ZIP_MD5) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, zip_path).map_err(|e| DataError::io(zip_path, e))
}

#[cfg(not(feature = "download"))]
fn download_ml1m(zip_path: &Path) -> Result<(), DataError> {
    Err(DataError::DownloadDisabled {
        manual_path: zip_path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tiny_zip(prefix: &str) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, body) in [
            ("users.dat", &b"1::F::1::10::48067\n"[..]),
            ("movies.dat", &b"1::Toy Story (1995)::Comedy\n"[..]),
            ("ratings.dat", &b"1::1::5::978300760\n"[..]),
        ] {
            w.start_file(format!("{prefix}{name}"), opts).unwrap();
            w.write_all(body).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn zip_entries_under_ml1m_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ml-1m.zip");
        fs::write(&path, tiny_zip("ml-1m/")).unwrap();
        let (files, record) = read_zip(DatasetKind::Ml1m, &path).unwrap();
        assert_eq!(files[2].name, "ml-1m.zip!ml-1m/ratings.dat");
        assert_eq!(record.bytes, fs::metadata(&path).unwrap().len());
        let data = parse_files(DatasetKind::Ml1m, files).unwrap();
        assert_eq!(data.ratings.len(), 1);
        assert_eq!(data.sources[0].md5, md5_hex(b"1::F::1::10::48067\n"));
    }

    #[test]
    fn truncated_zip_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ml-1m.zip");
        let bytes = tiny_zip("ml-1m/");
        fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = read_zip(DatasetKind::Ml1m, &path).unwrap_err();
        assert!(matches!(err, DataError::Zip { .. }), "{err}");
        assert!(err.to_string().contains("ml-1m.zip"));
    }

    #[test]
    fn corrupt_entry_data_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ml-1m.zip");
        let mut bytes = tiny_zip("");
        // Flip bytes inside the first entry's compressed data (after its 30-byte local header
        // and 9-byte name), keeping the central directory intact.
        for b in &mut bytes[40..44] {
            *b ^= 0xff;
        }
        fs::write(&path, &bytes).unwrap();
        let err = read_zip(DatasetKind::Ml1m, &path).unwrap_err();
        assert!(matches!(err, DataError::Zip { .. }), "{err}");
    }

    #[test]
    fn missing_entry_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.zip");
        fs::write(&path, tiny_zip("ml-1m/")).unwrap();
        let err = read_zip(DatasetKind::Ml100k, &path).unwrap_err();
        assert!(matches!(err, DataError::MissingFile { ref file, .. } if file == "u.user"));
    }

    #[test]
    fn a_wrong_zip_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ml-1m.zip");
        fs::write(&path, tiny_zip("ml-1m/")).unwrap();
        let err = ensure_ml1m_zip(&path).unwrap_err();
        assert!(matches!(err, DataError::Checksum { .. }));
        assert!(err.to_string().contains(ML1M_ZIP_MD5));
    }

    #[test]
    fn md5_of_empty_input() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }
}
