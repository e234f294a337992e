//! `Recommender` on a run trained on synthetic data: its answers against brute force over the
//! exported embeddings, the history encoding against the trainer's, exclusions, similar items,
//! and the errors of bad queries.

use dssm_recommend::{Error, IndexKind, Query, Recommender, Split, User, export_files};

fn trained_run(dir: &std::path::Path) -> std::path::PathBuf {
    let data = dir.join("synthetic-llo");
    let synthetic = dssm_data::SyntheticConfig {
        users: 120,
        items: 100,
        ratings: 5_000,
        ..dssm_data::SyntheticConfig::default()
    };
    let mut request = dssm_data::PrepareRequest::new(
        dssm_data::Source::Synthetic(synthetic),
        dssm_data::DatasetKind::Synthetic,
        &data,
    );
    request.protocol = dssm_data::Protocol::LeaveLastOut;
    dssm_data::prepare(&request, &|_| {}).unwrap();
    let run = dir.join("run");
    let config = dssm_trainer::RunConfig::from_toml_str(&format!(
        r#"
[data]
path = {data:?}
protocol = "leave-last-out"
[features]
history_len = 3
recent_len = 1
[model.user_tower]
hidden = [16, 8]
[model.item_tower]
hidden = [16, 8]
[train]
batch_size = 512
epochs = 1
select_metric = "hit_rate"
[output]
dir = {run:?}
"#
    ))
    .unwrap();
    dssm_trainer::train(&config, &dssm_trainer::TrainOptions::default()).unwrap();
    run
}

#[test]
fn answers_match_brute_force_and_the_trainers_history_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained_run(dir.path());
    let r = Recommender::load(&run, IndexKind::Exact).unwrap();
    assert!(r.uses_history());
    let key = r.user_keys()[7].clone();

    // The tower run per request on the stored features and the user's test-time history gives the
    // precomputed vector (built by the trainer's own history code): the encodings agree.
    let stored = r
        .user_vector(&Query::new(User::Known(key.clone()), 10))
        .unwrap();
    let mut again = Query::new(User::Known(key.clone()), 10);
    again.recent_items = r.history(&key).unwrap();
    let recomputed = r.user_vector(&again).unwrap();
    let gap = stored
        .vector
        .iter()
        .zip(&recomputed.vector)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(gap < 1e-5, "{:?} vs {:?}", stored.vector, recomputed.vector);
    // Other recent items give another vector.
    again.recent_items = vec![*r.history(&r.user_keys()[9]).unwrap().last().unwrap()];
    assert_ne!(r.user_vector(&again).unwrap().vector, stored.vector);

    // The top K by brute force over the exported embeddings (candidates: train items).
    let out = dir.path().join("export");
    let manifest = r.export(&out).unwrap();
    assert_eq!(manifest.model_id, r.model_id());
    let items = dssm_retrieval::read_embeddings(&out.join(export_files::ITEMS)).unwrap();
    let mut brute: Vec<(u32, f32)> = (0..items.matrix.len())
        .map(|row| items.matrix.ids()[row])
        .filter(|&id| r.item(id).unwrap().train_count() > 0)
        .map(|id| {
            let row = items.matrix.ids().iter().position(|&i| i == id).unwrap();
            let score: f32 = items
                .matrix
                .row(row)
                .iter()
                .zip(&stored.vector)
                .map(|(a, b)| a * b)
                .sum();
            (id, score)
        })
        .collect();
    let seen = r.seen(&key).unwrap().to_vec();
    brute.retain(|(id, _)| !seen.contains(id));
    brute.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut query = Query::new(User::Known(key.clone()), 8);
    query.exclude_seen = true;
    let top = r.recommend(&query).unwrap();
    let ids: Vec<u32> = top.items.iter().map(|s| s.id).collect();
    let expected: Vec<u32> = brute.iter().take(8).map(|&(id, _)| id).collect();
    assert_eq!(ids, expected);
    assert!(top.hidden > 0);

    // Explicit exclusions, similar items (never the item itself), metadata.
    query.exclude_seen = false;
    query.exclude = vec![ids[0]];
    assert!(
        !r.recommend(&query)
            .unwrap()
            .items
            .iter()
            .any(|s| s.id == ids[0])
    );
    let similar = r.similar(ids[0], 5).unwrap();
    assert_eq!(similar.len(), 5);
    assert!(similar.iter().all(|s| s.id != ids[0]));
    assert!(r.item(ids[0]).unwrap().attribute("title").is_some());
    let user = r.user(&key).unwrap();
    assert_eq!(r.history(&key).unwrap().len() + 1, user.recent.len());

    // The evaluation writes its record beside the run.
    let (record, path) = r.evaluate_retrieval(Split::Test).unwrap();
    assert!(path.is_file());
    assert_eq!(record.checkpoint, r.model_id());
}

#[test]
fn bad_queries_are_errors_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained_run(dir.path());
    let r = Recommender::load(&run, IndexKind::Exact).unwrap();
    let known = || Query::new(User::Known(r.user_keys()[0].clone()), 10);
    let field = |query: Query| {
        let error = r.recommend(&query).unwrap_err();
        assert!(error.is_bad_query(), "{error}");
        (error.field().unwrap(), error.to_string())
    };
    let mut q = known();
    q.k = 0;
    assert_eq!(field(q).0, "k");
    let mut q = known();
    q.k = 1001;
    assert!(field(q).1.contains("between 1 and 1000, found 1001"));
    let mut q = known();
    q.recent_items = vec![1, 99_999, 88_888];
    let (name, message) = field(q);
    assert_eq!(name, "recent_items");
    assert!(message.contains("99999, 88888"), "{message}");
    let mut q = known();
    q.exclude = vec![77_777];
    assert_eq!(field(q).0, "exclude");
    assert_eq!(
        field(Query::new(User::Known("nobody".into()), 3)).0,
        "user_id"
    );
    assert!(matches!(
        r.similar(55_555, 3),
        Err(Error::UnknownItems {
            field: "movie_id",
            ..
        })
    ));
    // A value outside the vocabulary is a note, not an error.
    let new = Query::new(User::New(vec![("gender".into(), "X".into())]), 3);
    let answer = r.recommend(&new).unwrap();
    assert_eq!(answer.items.len(), 3);
    assert!(
        answer.notes[0].contains("gender X is not in the train vocabulary"),
        "{:?}",
        answer.notes
    );
    // A broken run folder is an error naming it.
    let error = Recommender::load(&dir.path().join("nothing"), IndexKind::Exact).unwrap_err();
    assert!(
        error.to_string().contains("cannot load the run in"),
        "{error}"
    );
}

/// `export --index hnsw` saves the graph in the run's export folder; loading with HNSW maps it (no
/// rebuild) and answers as a freshly built graph does; an index of other embeddings is refused as
/// stale, a damaged one as corrupt, and without the file the graph is built in memory again.
#[test]
fn a_saved_index_is_mapped_and_a_stale_or_corrupt_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained_run(dir.path());
    let config = dssm_recommend::HnswConfig::default();
    let exporter = Recommender::load(&run, IndexKind::Exact).unwrap();
    let manifest = exporter
        .export_with_index(&run.join("embeddings"), Some(config))
        .unwrap();
    let saved = dssm_recommend::saved_index_path(&run);
    let index = manifest.index.as_ref().unwrap();
    assert_eq!(run.join("embeddings").join(&index.file), saved);
    assert_eq!(index.items, exporter.candidates());

    let mapped = Recommender::load(&run, IndexKind::Hnsw(config)).unwrap();
    assert_eq!(mapped.index_file(), Some(saved.as_path()));
    let exact_top = |r: &Recommender, key: &str| {
        let mut query = Query::new(User::Known(key.to_string()), 10);
        query.exclude_seen = true;
        r.recommend(&query).unwrap().items
    };
    for key in exporter.user_keys().iter().take(20) {
        // 100 candidates, ef 100: the graph search is exhaustive here, so the answers are exact.
        assert_eq!(
            exact_top(&mapped, key),
            exact_top(&exporter, key),
            "user {key}"
        );
    }

    // Stale: an index built from other embeddings (here: the candidates scaled by 2).
    let (ids, dim, data) = exporter.candidate_embeddings().unwrap().into_parts();
    let doubled: Vec<f32> = data.iter().map(|x| x * 2.0).collect();
    let other = dssm_retrieval::EmbeddingMatrix::new(ids, dim, doubled).unwrap();
    let good = std::fs::read(&saved).unwrap();
    dssm_retrieval::HnswIndex::build(other, config)
        .unwrap()
        .save(&saved)
        .unwrap();
    let error = Recommender::load(&run, IndexKind::Hnsw(config))
        .err()
        .unwrap();
    assert!(
        matches!(
            error,
            Error::Retrieval(dssm_retrieval::Error::HnswStale { .. })
        ),
        "{error}"
    );
    assert!(error.to_string().contains("stale"), "{error}");

    // Corrupt: one byte of the graph changed.
    let mut damaged = good.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    std::fs::write(&saved, &damaged).unwrap();
    let error = Recommender::load(&run, IndexKind::Hnsw(config))
        .err()
        .unwrap();
    assert!(
        matches!(
            error,
            Error::Retrieval(dssm_retrieval::Error::HnswCorrupt { .. })
        ),
        "{error}"
    );

    // No file: built in memory, as before.
    std::fs::remove_file(&saved).unwrap();
    let built = Recommender::load(&run, IndexKind::Hnsw(config)).unwrap();
    assert_eq!(built.index_file(), None);
    std::fs::write(&saved, &good).unwrap();
    assert!(Recommender::load(&run, IndexKind::Hnsw(config)).is_ok());
}
