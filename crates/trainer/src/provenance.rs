//! Where a run's figures come from: checksums of what it read and wrote, the code version, the
//! process's peak memory.

use std::path::{Path, PathBuf};

/// FNV-1a (64-bit) of `bytes` as 16 hex digits: the checksum a run records for its dataset's manifest
/// (`DatasetInfo::manifest_checksum`) and its checkpoint weights (`FinalMetrics::checkpoint`).
///
/// ```
/// assert_eq!(dssm_trainer::checksum(b""), "cbf29ce484222325");
/// ```
pub fn checksum(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Peak resident memory of this process in MiB, from `/proc/self/status` (`VmHWM`); `None` where
/// there is no such file.
pub(crate) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Crate version plus `git rev-parse HEAD` when it works.
pub(crate) fn code_version() -> String {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    format!("dssm-trainer {} ({commit})", env!("CARGO_PKG_VERSION"))
}

/// `path` against the current directory when relative.
pub(crate) fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}
