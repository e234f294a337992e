//! The dependency rules of ARCHITECTURE.md ("Who may depend on whom"), checked on the manifests so that a new
//! dependency that breaks a crate's independence fails CI instead of slipping in.

use std::collections::BTreeSet;
use std::path::PathBuf;

/// Every dependency name (normal, optional and build; not dev) of `crates/<name>/Cargo.toml`.
fn dependencies(name: &str) -> BTreeSet<String> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../crates/{name}/Cargo.toml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let manifest: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ["dependencies", "build-dependencies"]
        .iter()
        .filter_map(|section| manifest.get(*section).and_then(toml::Value::as_table))
        .flat_map(|table| table.keys().cloned())
        .collect()
}

fn assert_none_of(krate: &str, forbidden: &[&str]) {
    let deps = dependencies(krate);
    let found: Vec<&&str> = forbidden.iter().filter(|f| deps.contains(**f)).collect();
    assert!(
        found.is_empty(),
        "crates/{krate} must not depend on {found:?}"
    );
}

const OURS: [&str; 9] = [
    "dssm-data",
    "dssm-sampler",
    "dssm-model",
    "dssm-trainer",
    "dssm-retrieval",
    "dssm-recommend",
    "dssm-serve",
    "dssm-cli",
    "dssm-milvus",
];

#[test]
fn the_sampler_needs_only_rand_and_rayon() {
    let deps = dependencies("sampler");
    let allowed: BTreeSet<String> = ["rand", "rayon", "thiserror"].map(String::from).into();
    assert!(deps.is_subset(&allowed), "dssm-sampler depends on {deps:?}");
}

#[test]
fn data_model_and_retrieval_stand_alone() {
    for krate in ["data", "model", "retrieval"] {
        assert_none_of(krate, &OURS);
        assert_none_of(krate, &["anyhow"]);
    }
    assert_none_of("data", &["candle-core", "candle-nn"]);
    assert_none_of("retrieval", &["candle-core", "candle-nn"]);
    assert_none_of("model", &["arrow", "parquet"]);
}

#[test]
fn the_milvus_client_stands_alone() {
    assert_none_of("milvus", &OURS);
    assert_none_of(
        "milvus",
        &["anyhow", "arrow", "parquet", "candle-core", "candle-nn"],
    );
}

#[test]
fn the_trainer_is_a_library_without_the_cli() {
    assert_none_of("trainer", &["dssm-cli", "anyhow", "clap"]);
}

/// The `use` lines of a trainer module (`crates/trainer/src/<module>`), one path each.
fn trainer_imports(module: &str) -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/trainer/src")
        .join(module);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut imports = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if current.is_empty() && !line.starts_with("use ") {
            continue;
        }
        current.push_str(line);
        if line.ends_with(';') {
            imports.push(std::mem::take(&mut current));
        }
    }
    imports
}

/// Fails when a `use` of `module` names any of `forbidden`.
fn assert_trainer_module_uses_none_of(module: &str, forbidden: &[&str]) {
    for import in trainer_imports(module) {
        for name in forbidden {
            assert!(
                !import.contains(name),
                "crates/trainer/src/{module} must not use {name}: `{import}`"
            );
        }
    }
}

#[test]
fn the_learner_knows_no_protocol_and_tasks_know_no_run_folder() {
    // The learner drives a task; batches, losses, inputs and evaluation are the tasks'.
    let protocol_specific = [
        "crate::inputs",
        "crate::batches",
        "crate::retrieval",
        "crate::history",
        "crate::metrics",
        "crate::task::pointwise",
        "crate::task::retrieval",
        "dssm_retrieval",
        "dssm_data",
        "Protocol",
        "LossKind",
    ];
    assert_trainer_module_uses_none_of("learner.rs", &protocol_specific);
    assert!(
        trainer_imports("learner.rs")
            .iter()
            .any(|i| i.contains("crate::task::{Batches, Task")),
        "the learner is written against the task trait"
    );
    // Tasks neither write files nor step the optimizer.
    for task in [
        "task/mod.rs",
        "task/pointwise.rs",
        "task/retrieval.rs",
        "step.rs",
        "batches.rs",
        "mining.rs",
    ] {
        assert_trainer_module_uses_none_of(
            task,
            &[
                "crate::run_folder",
                "crate::optim",
                "crate::learner",
                "crate::policy",
            ],
        );
    }
    // Checkpoint decisions are values: the policy does no IO and knows no run folder.
    assert_trainer_module_uses_none_of("policy.rs", &["std::fs", "std::io", "crate::"]);
}

#[test]
fn recommendations_are_a_library_and_serving_only_translates_http() {
    assert_none_of(
        "recommend",
        &["dssm-cli", "dssm-serve", "anyhow", "clap", "axum", "tokio"],
    );
    assert_none_of(
        "serve",
        &[
            "dssm-cli",
            "dssm-trainer",
            "dssm-model",
            "candle-core",
            "candle-nn",
            "anyhow",
            "clap",
        ],
    );
    assert!(dependencies("serve").contains("dssm-recommend"));
}
