//! `Recommender` on a sequence run trained on synthetic data: known users without recent items
//! get the exported embedding; recent items extend a known user's sequence in order; a new
//! user's sequence is the recent items alone (the newest `max_len` read); exclusions.

use candle_core::Device;
use dssm_model::{HostColumn, Mode, Side, SideBatch};
use dssm_recommend::{IndexKind, Query, Recommender, Split, User, export_files};

/// The tower's `max_len` in this run.
const MAX_LEN: usize = 5;

fn trained_sequence_run(dir: &std::path::Path) -> std::path::PathBuf {
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
user = ["gender", "age"]
item = ["movie_id", "genres"]
embedding_dim = 8
[model.user_tower]
hidden = [16, 8]
l2_normalize = true
[model.item_tower]
hidden = [16, 8]
l2_normalize = true
[model.sequence]
enabled = true
max_len = {MAX_LEN}
blocks = 1
heads = 2
dropout = 0.1
user_features = true
[sampler]
strategy = "none"
[loss]
kind = "full_softmax"
temperature = 0.1
[train]
batch_size = 64
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

fn max_gap(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn sequence_runs_serve_known_and_new_users_with_recent_items() {
    let dir = tempfile::tempdir().unwrap();
    let run = trained_sequence_run(dir.path());
    let r = Recommender::load(&run, IndexKind::Exact).unwrap();
    assert!(r.uses_history());
    let loaded = r.run();
    let model = &loaded.model;
    let dataset = &loaded.dataset;
    let encoder = loaded.sequence_encoder().unwrap().expect("a sequence run");
    assert_eq!(encoder.max_len(), MAX_LEN);
    let item_row = |id: u32| {
        dataset
            .items
            .movie_id
            .iter()
            .position(|&m| m == id)
            .unwrap() as u32
    };
    let candidates: Vec<u32> = (0..dataset.items.movie_id.len())
        .filter(|&row| dataset.items.train_count[row] > 0)
        .map(|row| dataset.items.movie_id[row])
        .collect();

    // (a) A known user without recent items: exactly the exported user embedding.
    let out = dir.path().join("export");
    r.export(&out).unwrap();
    let exported = dssm_retrieval::read_embeddings(&out.join(export_files::USERS)).unwrap();
    let user_row = 7usize;
    let key = r.user_keys()[user_row].clone();
    let stored = r
        .user_vector(&Query::new(User::Known(key.clone()), 10))
        .unwrap();
    let at = exported
        .matrix
        .ids()
        .iter()
        .position(|&id| id == dataset.users.user_id[user_row])
        .unwrap();
    assert_eq!(stored.vector, exported.matrix.row(at));
    assert!(stored.notes.is_empty(), "{:?}", stored.notes);

    // The user's test-time sequence, read here from the splits: train items by (timestamp,
    // line), a missing timestamp first, then the validation item.
    let train = dataset.interactions(Split::Train).unwrap();
    let mut own: Vec<(Option<i64>, u32, u32)> = (0..train.user_row.len())
        .filter(|&i| train.user_row[i] as usize == user_row)
        .map(|i| (train.timestamp[i], train.line[i], train.item_row[i]))
        .collect();
    own.sort_by_key(|&(t, line, _)| (t.is_some(), t, line));
    let mut sequence: Vec<u32> = own.iter().map(|&(_, _, item)| item).collect();
    let val = dataset.interactions(Split::Val).unwrap();
    let v = val
        .user_row
        .iter()
        .position(|&u| u as usize == user_row)
        .expect("the user has a validation item");
    sequence.push(val.item_row[v]);
    assert_eq!(encoder.sequence(user_row as u32), sequence);
    let users = encoder.user_batch(model, user_row as u32).unwrap();
    let again = encoder.encode(model, &users, &sequence).unwrap();
    assert!(max_gap(&again, &stored.vector) < 1e-5, "{again:?}");

    // (b) Recent items [a, b] (b the newest): the trainer's encoding of train + val + [a, b];
    // [b, a] is another vector.
    let (a, b) = (candidates[3], candidates[11]);
    let mut query = Query::new(User::Known(key.clone()), 10);
    query.recent_items = vec![a, b];
    let with_ab = r.user_vector(&query).unwrap().vector;
    let mut extended = sequence.clone();
    extended.extend([item_row(a), item_row(b)]);
    let expected = encoder.encode(model, &users, &extended).unwrap();
    assert_eq!(with_ab, expected);
    assert_ne!(with_ab, stored.vector);
    query.recent_items = vec![b, a];
    let with_ba = r.user_vector(&query).unwrap().vector;
    assert!(max_gap(&with_ab, &with_ba) > 1e-4, "order matters");

    // (c) A new user: the tower over the recent items alone with the given features.
    let vocabularies = &dataset.vocabularies;
    let (gender, age) = (
        vocabularies.encode("gender", "F").unwrap(),
        vocabularies.encode("age", "25").unwrap(),
    );
    let features = vec![
        ("gender".to_string(), "F".to_string()),
        ("age".to_string(), "25".to_string()),
    ];
    let new_users = SideBatch::from_host(
        model.config(),
        Side::User,
        1,
        &[HostColumn::Ids(&[gender]), HostColumn::Ids(&[age])],
        &Device::Cpu,
    )
    .unwrap();
    let recent: Vec<u32> = candidates[20..20 + MAX_LEN + 3].to_vec();
    let rows: Vec<u32> = recent.iter().map(|&id| item_row(id)).collect();
    let mut query = Query::new(User::New(features.clone()), 10);
    query.recent_items = recent.clone();
    let new_vector = r.user_vector(&query).unwrap();
    assert!(new_vector.notes.is_empty(), "{:?}", new_vector.notes);
    let expected = encoder.encode(model, &new_users, &rows).unwrap();
    assert_eq!(new_vector.vector, expected);
    // More than max_len items: the newest max_len give the same vector.
    query.recent_items = recent[recent.len() - MAX_LEN..].to_vec();
    assert_eq!(r.user_vector(&query).unwrap().vector, new_vector.vector);
    query.recent_items = recent[..MAX_LEN].to_vec();
    assert_ne!(r.user_vector(&query).unwrap().vector, new_vector.vector);
    // No recent items: all padding, the user features' contribution alone.
    query.recent_items.clear();
    let alone = r.user_vector(&query).unwrap().vector;
    let tower = model
        .encode_users(&new_users, Mode::Eval)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(max_gap(&alone, &tower) < 1e-5, "{alone:?} vs {tower:?}");
    // Nothing at all (no features, no items) still answers.
    let nobody = r.recommend(&Query::new(User::New(Vec::new()), 5)).unwrap();
    assert_eq!(nobody.items.len(), 5);
    assert!(nobody.items.iter().all(|s| s.score.is_finite()));

    // (d) exclude_seen for a new user hides the recent items.
    let all = candidates.len();
    let mut query = Query::new(User::New(features), all);
    query.recent_items = recent.clone();
    query.exclude_seen = true;
    let found = r.recommend(&query).unwrap();
    assert_eq!(found.items.len(), all - recent.len());
    assert_eq!(found.hidden, recent.len());
    assert!(found.items.iter().all(|s| !recent.contains(&s.id)));

    // Unknown recent ids are an error naming them.
    let mut query = Query::new(User::Known(key), 10);
    query.recent_items = vec![a, 99_999];
    let error = r.recommend(&query).unwrap_err();
    assert_eq!(error.field().as_deref(), Some("recent_items"));
    assert!(error.to_string().contains("99999"), "{error}");
}
