//! The `dssm` binary itself (`CARGO_BIN_EXE_dssm`): exit codes and error messages as a user sees
//! them, no temporary folder left behind after a failure, and training that does not depend on
//! the number of threads (`RAYON_NUM_THREADS`), byte for byte in the run folder; `dssm serve` under
//! SIGHUP (reload) and SIGTERM (graceful stop).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `dssm` with `args` (and `env`), returning its output.
fn dssm(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dssm"));
    command.args(args).env("RUST_LOG", "warn");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the dssm binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// A small synthetic dataset folder prepared by the binary under `protocol`.
fn prepare_synthetic(dir: &Path, protocol: &str) -> PathBuf {
    let out = dir.join(format!("synthetic-{protocol}"));
    let output = dssm(
        &[
            "prepare-data",
            "--dataset",
            "synthetic",
            "--protocol",
            protocol,
            "--users",
            "300",
            "--items",
            "200",
            "--ratings",
            "12000",
            "--seed",
            "7",
            "--out",
            path(&out),
        ],
        &[],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    out
}

/// A two-epoch config of `protocol` on `data`, small enough to train in a second.
fn config_text(data: &Path, protocol: &str) -> String {
    let loss = match protocol {
        "seed" => "kind = \"bce\"",
        _ => "kind = \"in_batch_softmax\"\ntemperature = 0.05\nlogq_correction = true",
    };
    let select = match protocol {
        "seed" => "auc",
        _ => "hit_rate",
    };
    format!(
        r#"[data]
path = {data:?}
protocol = "{protocol}"

[features]
embedding_dim = 8

[model.user_tower]
hidden = [32, 16]
dropout = 0.1
l2_normalize = {normalize}

[model.item_tower]
hidden = [32, 16]
dropout = 0.1
l2_normalize = {normalize}

[loss]
{loss}

[train]
batch_size = 256
epochs = 2
select_metric = "{select}"
seed = 3

[output]
dir = "unused"
"#,
        data = path(data),
        normalize = protocol != "seed",
    )
}

/// Every metrics.jsonl line without its timing fields.
fn untimed_epochs(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|line| {
            let mut record: serde_json::Value = serde_json::from_str(line).unwrap();
            let fields = record.as_object_mut().unwrap();
            assert!(
                fields.remove("samples_per_sec").is_some() && fields.remove("wall_s").is_some()
            );
            record
        })
        .collect()
}

#[test]
fn training_gives_the_same_bytes_on_one_and_two_threads() {
    let dir = tempfile::tempdir().unwrap();
    for protocol in ["seed", "leave-last-out"] {
        let data = prepare_synthetic(dir.path(), protocol);
        let config = dir.path().join(format!("{protocol}.toml"));
        std::fs::write(&config, config_text(&data, protocol)).unwrap();
        let run = |threads: &str| {
            let run = dir.path().join(format!("{protocol}-{threads}"));
            let output = dssm(
                &["train", "--config", path(&config), "--run-dir", path(&run)],
                &[("RAYON_NUM_THREADS", threads)],
            );
            assert!(output.status.success(), "{protocol}: {}", stderr(&output));
            run
        };
        let (one, two) = (run("1"), run("2"));
        let (a, b) = (untimed_epochs(&one), untimed_epochs(&two));
        assert_eq!(a.len(), 2, "{protocol}");
        assert_eq!(a, b, "{protocol}: metrics.jsonl differs");
        for file in [
            "checkpoints/best/model.safetensors",
            "checkpoints/last/model.safetensors",
            "checkpoints/last/optimizer.safetensors",
        ] {
            let read = |run: &Path| std::fs::read(run.join(file)).unwrap();
            assert!(read(&one) == read(&two), "{protocol}: {file} differs");
        }
        let metrics = |run: &Path| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(run.join("metrics.json")).unwrap()).unwrap()
        };
        let (a, b) = (metrics(&one), metrics(&two));
        assert_eq!(a["engine"], "fused", "{protocol}");
        for key in ["test", "val", "retrieval", "checkpoint", "best_epoch"] {
            assert_eq!(a[key], b[key], "{protocol}: metrics.json {key} differs");
        }
    }
}

#[test]
fn a_misspelt_config_key_exits_1_naming_the_key_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(Path::new("/nonexistent"), "seed");
    let (before, after) = text.split_once("[model.item_tower]\n").unwrap();
    let line = before.lines().count() + 2;
    let config = dir.path().join("misspelt.toml");
    std::fs::write(
        &config,
        format!("{before}[model.item_tower]\n  dropuot = 0.1\n{after}"),
    )
    .unwrap();
    let output = dssm(&["train", "--config", path(&config)], &[]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("dropuot"), "{message}");
    assert!(
        message.contains(&format!("line {line}, column 3")),
        "line {line}, column 3: {message}"
    );
}

#[test]
fn a_bad_flag_exits_2() {
    for args in [
        &["train", "--config", "x.toml", "--bogus"][..],
        &["prepare-data", "--protocol", "sideways"][..],
        &["no-such-command"][..],
    ] {
        let output = dssm(args, &[]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(stderr(&output).contains("error"), "{args:?}");
    }
}

#[test]
fn a_bad_ratings_line_is_named_and_leaves_no_folder_behind() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("ml-1m");
    let config = dssm_data::SyntheticConfig {
        users: 50,
        items: 40,
        ratings: 1_000,
        ..dssm_data::SyntheticConfig::default()
    };
    dssm_data::synthetic::generate(&config)
        .unwrap()
        .write_to(&source)
        .unwrap();
    let ratings = std::fs::read_to_string(source.join("ratings.dat")).unwrap();
    let mut lines: Vec<&str> = ratings.lines().collect();
    lines[56] = "1::not-a-movie::5::978300760";
    std::fs::write(source.join("ratings.dat"), lines.join("\n") + "\n").unwrap();
    let prepared = dir.path().join("prepared");
    std::fs::create_dir(&prepared).unwrap();
    let out = prepared.join("ml-1m-seed");
    let output = dssm(
        &[
            "prepare-data",
            "--source",
            path(&source),
            "--out",
            path(&out),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("ratings.dat:57"), "{message}");
    // Neither the dataset nor a temporary sibling is left.
    let left: Vec<_> = std::fs::read_dir(&prepared).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[cfg(unix)]
#[test]
fn a_failed_final_rename_leaves_no_temporary_folder() {
    // `--out` is a dangling symlink: it does not "exist", so prepare-data parses, encodes and
    // writes the whole dataset into its temporary sibling, and only the final rename (a folder
    // onto a non-folder) fails. The temporary folder must go with the error.
    let dir = tempfile::tempdir().unwrap();
    let prepared = dir.path().join("prepared");
    std::fs::create_dir(&prepared).unwrap();
    let out = prepared.join("synthetic-seed");
    std::os::unix::fs::symlink(prepared.join("nowhere"), &out).unwrap();
    let output = dssm(
        &[
            "prepare-data",
            "--dataset",
            "synthetic",
            "--users",
            "50",
            "--items",
            "40",
            "--ratings",
            "1000",
            "--out",
            path(&out),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let left: Vec<_> = std::fs::read_dir(&prepared)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        [std::ffi::OsString::from("synthetic-seed")],
        "left behind: {left:?}"
    );
}

#[test]
fn resume_without_a_checkpoint_exits_1_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = prepare_synthetic(dir.path(), "seed");
    let config = dir.path().join("seed.toml");
    std::fs::write(&config, config_text(&data, "seed")).unwrap();
    let run = dir.path().join("never-trained");
    let output = dssm(
        &[
            "train",
            "--config",
            path(&config),
            "--run-dir",
            path(&run),
            "--resume",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no checkpoints/last"),
        "{}",
        stderr(&output)
    );
    assert!(!run.exists());
}

/// One HTTP/1.1 request on a fresh connection: `(status, body)`.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("the server listens");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name}");
}

#[test]
fn serve_answers_reloads_on_sighup_and_stops_cleanly_on_sigterm() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let data = prepare_synthetic(dir.path(), "leave-last-out");
    let config = dir.path().join("llo.toml");
    std::fs::write(&config, config_text(&data, "leave-last-out")).unwrap();
    let run = dir.path().join("run");
    let output = dssm(
        &["train", "--config", path(&config), "--run-dir", path(&run)],
        &[],
    );
    assert!(output.status.success(), "{}", stderr(&output));

    let mut child = Command::new(env!("CARGO_BIN_EXE_dssm"))
        .args(["serve", "--run", path(&run), "--addr", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("dssm serve starts");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    // "serving    <model id> on http://127.0.0.1:PORT"
    let addr = line
        .trim()
        .rsplit("http://")
        .next()
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    let (status, body) = http(&addr, "POST", "/v1/recommend", r#"{"user_id": 3, "k": 4}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.matches("\"movie_id\"").count(), 4, "{body}");

    // SIGHUP reloads (the server keeps running and counts it); SIGTERM stops it with exit 0.
    signal(child.id(), "HUP");
    let reloaded = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        http(&addr, "GET", "/metrics", "")
            .1
            .contains("dssm_reloads_total 1")
    });
    assert!(reloaded, "SIGHUP reloaded the run");
    assert_eq!(http(&addr, "GET", "/health", "").0, 200);
    signal(child.id(), "TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM: {status:?}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(rest.contains("stopped"), "{rest}");
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "no longer listening"
    );
}
