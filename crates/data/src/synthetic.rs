//! A seeded generator of MovieLens-1M-format files with learnable structure.
//!
//! Users get genre tastes from their demographics (gender, age group, occupation) plus personal
//! noise; items get 1-3 genres, a quality and a Zipf-like popularity that correlates with quality.
//! Each user picks items by popularity, accepting those that fit their taste more often, and rates
//! them by taste fit + item quality + user bias + noise, so that a model using features beats
//! popularity. The rating offset is calibrated so that 57.5% of ratings are above 3.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::error::DataError;
use crate::raw::ML1M_GENRES;
use crate::source::NamedBytes;

/// Sizes and knobs of the synthetic generator.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    /// Number of users. Default 600.
    pub users: u32,
    /// Number of movies. Default 400.
    pub items: u32,
    /// Target number of ratings (the result is within a few percent). Default 30,000.
    pub ratings: u64,
    /// RNG seed; the same config gives byte-identical files. Default 42.
    pub seed: u64,
    /// Share of ratings lines written without a timestamp (3 fields). Default 0.
    pub no_timestamp_share: f64,
    /// Zipf exponent of item popularity. Default 1.0.
    pub popularity_exponent: f64,
    /// Standard deviation of a user's personal taste around their demographic taste. Default 0.7.
    pub taste_noise: f64,
    /// Standard deviation of the rating noise. Default 0.7.
    pub rating_noise: f64,
    /// Share of ratings above 3 the rating offset is calibrated to. Default 0.575.
    pub positive_share: f64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            users: 600,
            items: 400,
            ratings: 30_000,
            seed: 42,
            no_timestamp_share: 0.0,
            popularity_exponent: 1.0,
            taste_noise: 0.7,
            rating_noise: 0.7,
            positive_share: 0.575,
        }
    }
}

impl SyntheticConfig {
    /// Checks sizes and shares.
    pub fn check(&self) -> Result<(), DataError> {
        let bad = |message: &str| {
            Err(DataError::InvalidConfig {
                message: format!("synthetic: {message}"),
            })
        };
        if self.users == 0 || self.items == 0 || self.ratings == 0 {
            return bad("users, items and ratings must be positive");
        }
        if self.ratings > u64::from(self.users) * u64::from(self.items) / 2 {
            return bad("ratings must be at most half of users x items");
        }
        if !(0.0..=1.0).contains(&self.no_timestamp_share) {
            return bad("no_timestamp_share must be in 0..=1");
        }
        if !(0.01..=0.99).contains(&self.positive_share) {
            return bad("positive_share must be in 0.01..=0.99");
        }
        if !(self.popularity_exponent >= 0.0 && self.taste_noise >= 0.0 && self.rating_noise >= 0.0)
        {
            return bad("popularity_exponent, taste_noise and rating_noise must be >= 0");
        }
        Ok(())
    }
}

/// The three generated files, in ML-1M format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticFiles {
    /// users.dat contents.
    pub users: Vec<u8>,
    /// movies.dat contents.
    pub movies: Vec<u8>,
    /// ratings.dat contents.
    pub ratings: Vec<u8>,
}

impl SyntheticFiles {
    /// Writes users.dat, movies.dat and ratings.dat into `dir` (created if needed).
    pub fn write_to(&self, dir: &Path) -> Result<(), DataError> {
        fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        for (name, bytes) in [
            ("users.dat", &self.users),
            ("movies.dat", &self.movies),
            ("ratings.dat", &self.ratings),
        ] {
            let path = dir.join(name);
            fs::write(&path, bytes).map_err(|e| DataError::io(&path, e))?;
        }
        Ok(())
    }

    /// The files as named buffers (users, movies, ratings), for [`crate::source::parse_files`].
    pub fn into_named(self) -> [NamedBytes; 3] {
        [
            NamedBytes {
                name: "synthetic/users.dat".into(),
                bytes: self.users,
            },
            NamedBytes {
                name: "synthetic/movies.dat".into(),
                bytes: self.movies,
            },
            NamedBytes {
                name: "synthetic/ratings.dat".into(),
                bytes: self.ratings,
            },
        ]
    }
}

const AGE_CODES: [u32; 7] = [1, 18, 25, 35, 45, 50, 56];
const AGE_WEIGHTS: [f64; 7] = [0.037, 0.183, 0.347, 0.197, 0.091, 0.083, 0.062];
const GENRE_WEIGHTS: [f64; 18] = [
    0.10, 0.06, 0.02, 0.04, 0.16, 0.04, 0.02, 0.20, 0.01, 0.01, 0.05, 0.02, 0.02, 0.06, 0.04, 0.07,
    0.03, 0.02,
];
const ADJECTIVES: [&str; 24] = [
    "Silent", "Lost", "Golden", "Last", "Dark", "Broken", "Wild", "Hidden", "Crimson", "Endless",
    "Frozen", "Little", "Secret", "Distant", "Burning", "Quiet", "Brave", "Strange", "Electric",
    "Midnight", "Restless", "Hollow", "Royal", "Bitter",
];
const NOUNS: [&str; 24] = [
    "River", "City", "Summer", "Stranger", "Kingdom", "Road", "Garden", "Mirror", "Harbor",
    "Promise", "Empire", "Island", "Winter", "Machine", "Letter", "Highway", "Forest", "Witness",
    "Ocean", "Station", "Horizon", "Signal", "Country", "Dream",
];
const FIRST_TIMESTAMP: i64 = 956_703_932;

fn normal(rng: &mut StdRng) -> f64 {
    // Box-Muller; 1 - u keeps the log argument in (0, 1].
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random::<f64>();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

fn pick_weighted(rng: &mut StdRng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

fn random_vec(rng: &mut StdRng, scale: f64) -> [f64; 18] {
    std::array::from_fn(|_| normal(rng) * scale)
}

/// The movie id of item row `row`: ids have gaps, as in MovieLens.
fn movie_id(row: u32) -> u32 {
    row + 1 + row / 10
}

/// Generates the three files for `config`.
///
/// ```
/// use dssm_data::synthetic::{generate, SyntheticConfig};
/// let config = SyntheticConfig { users: 50, items: 40, ratings: 500, ..Default::default() };
/// let files = generate(&config).unwrap();
/// assert_eq!(files.users.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count(), 50);
/// ```
pub fn generate(config: &SyntheticConfig) -> Result<SyntheticFiles, DataError> {
    config.check()?;
    let mut rng = StdRng::seed_from_u64(config.seed);
    let n_users = config.users as usize;
    let n_items = config.items as usize;

    // Demographic taste effects.
    let gender_effect = [random_vec(&mut rng, 0.8), random_vec(&mut rng, 0.8)];
    let age_effect: Vec<[f64; 18]> = (0..AGE_CODES.len())
        .map(|_| random_vec(&mut rng, 0.8))
        .collect();
    let occupation_effect: Vec<[f64; 18]> = (0..21).map(|_| random_vec(&mut rng, 0.6)).collect();

    // Users.
    let mut users_txt = String::with_capacity(n_users * 24);
    let mut taste = Vec::with_capacity(n_users);
    let mut user_bias = Vec::with_capacity(n_users);
    let mut activity = Vec::with_capacity(n_users);
    for u in 0..n_users {
        let male = rng.random::<f64>() < 0.72;
        let age = pick_weighted(&mut rng, &AGE_WEIGHTS);
        let occupation = rng.random_range(0..21usize);
        let zip: u32 = rng.random_range(0..100_000);
        let g = &gender_effect[usize::from(male)];
        let t: [f64; 18] = std::array::from_fn(|k| {
            g[k] + age_effect[age][k]
                + occupation_effect[occupation][k]
                + config.taste_noise * normal(&mut rng)
        });
        taste.push(t);
        user_bias.push(0.3 * normal(&mut rng));
        activity.push((0.8 * normal(&mut rng)).exp());
        let _ = writeln!(
            users_txt,
            "{}::{}::{}::{}::{zip:05}",
            u + 1,
            if male { 'M' } else { 'F' },
            AGE_CODES[age],
            occupation
        );
    }

    // Items.
    let mut movies_txt = String::with_capacity(n_items * 48);
    let mut item_genres: Vec<Vec<usize>> = Vec::with_capacity(n_items);
    let mut quality = Vec::with_capacity(n_items);
    for row in 0..n_items {
        let k = 1 + pick_weighted(&mut rng, &[0.5, 0.35, 0.15]);
        let mut genres: Vec<usize> = Vec::with_capacity(k);
        while genres.len() < k {
            let g = pick_weighted(&mut rng, &GENRE_WEIGHTS);
            if !genres.contains(&g) {
                genres.push(g);
            }
        }
        genres.sort_unstable();
        let year = (2000 - (normal(&mut rng).abs() * 15.0) as i64).max(1919);
        let adjective = ADJECTIVES[rng.random_range(0..ADJECTIVES.len())];
        let noun = NOUNS[rng.random_range(0..NOUNS.len())];
        let title = match rng.random_range(0..10u32) {
            0 => format!("{noun}, The ({adjective} {noun}) ({year})"),
            1 => format!("{adjective} {noun} {}", row + 1),
            2 | 3 => format!("{noun}, The ({year})"),
            _ => format!("{adjective} {noun} ({year})"),
        };
        let names: Vec<&str> = genres.iter().map(|&g| ML1M_GENRES[g]).collect();
        let _ = writeln!(
            movies_txt,
            "{}::{title}::{}",
            movie_id(row as u32),
            names.join("|")
        );
        item_genres.push(genres);
        quality.push(0.5 * normal(&mut rng));
    }

    // Popularity: Zipf over items ranked by quality plus noise.
    let mut order: Vec<(f64, usize)> = (0..n_items)
        .map(|i| (quality[i] + normal(&mut rng), i))
        .collect();
    order.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut cumulative = Vec::with_capacity(n_items);
    let mut total = 0.0;
    let mut item_at_rank = Vec::with_capacity(n_items);
    for (rank, &(_, item)) in order.iter().enumerate() {
        total += 1.0 / ((rank + 1) as f64).powf(config.popularity_exponent);
        cumulative.push(total);
        item_at_rank.push(item);
    }

    // Ratings per user from activity weights.
    let activity_sum: f64 = activity.iter().sum();
    let max_per_user = (n_items * 3 / 5).max(1);
    let per_user: Vec<usize> = activity
        .iter()
        .map(|w| {
            ((config.ratings as f64 * w / activity_sum).round() as usize).clamp(1, max_per_user)
        })
        .collect();

    // Choose items and raw (uncalibrated) rating scores.
    let total_ratings: usize = per_user.iter().sum();
    let mut chosen: Vec<(u32, u32, f64)> = Vec::with_capacity(total_ratings);
    let mut seen = vec![u32::MAX; n_items];
    for u in 0..n_users {
        let want = per_user[u];
        let mut got = 0;
        let mut attempts = 0;
        while got < want && attempts < 50 * want + 1000 {
            attempts += 1;
            let x = rng.random::<f64>() * total;
            let rank = cumulative.partition_point(|&c| c <= x).min(n_items - 1);
            let item = item_at_rank[rank];
            if seen[item] == u as u32 {
                continue;
            }
            let genres = &item_genres[item];
            let fit =
                genres.iter().map(|&g| taste[u][g]).sum::<f64>() / (genres.len() as f64).sqrt();
            // Accept items that fit the user's taste more often.
            let accept = 1.0 / (1.0 + (-(1.2 * fit - 0.5)).exp());
            if rng.random::<f64>() >= accept {
                continue;
            }
            seen[item] = u as u32;
            let score =
                0.6 * fit + quality[item] + user_bias[u] + config.rating_noise * normal(&mut rng);
            chosen.push((u as u32, item as u32, score));
            got += 1;
        }
    }

    // Calibrate the offset so that `positive_share` of scores land above 3.5.
    let mut scores: Vec<f64> = chosen.iter().map(|c| c.2).collect();
    let offset = if scores.is_empty() {
        3.0
    } else {
        let k =
            (((1.0 - config.positive_share) * scores.len() as f64) as usize).min(scores.len() - 1);
        let (_, q, _) = scores.select_nth_unstable_by(k, f64::total_cmp);
        3.5 - *q
    };

    // Timestamps in choice order, with same-second ties; lines shuffled within a user.
    let mut ratings_txt = String::with_capacity(chosen.len() * 24);
    let mut start = 0;
    let mut block: Vec<(u32, u8, i64)> = Vec::new();
    while start < chosen.len() {
        let u = chosen[start].0;
        let end = start + chosen[start..].iter().take_while(|c| c.0 == u).count();
        let mut t = FIRST_TIMESTAMP + rng.random_range(0..80_000_000i64);
        block.clear();
        for &(_, item, score) in &chosen[start..end] {
            if rng.random::<f64>() >= 0.3 {
                t += 1 + (-(1.0 - rng.random::<f64>()).ln() * 200_000.0) as i64;
            }
            let rating = (score + offset).round().clamp(1.0, 5.0) as u8;
            block.push((movie_id(item), rating, t));
        }
        for i in (1..block.len()).rev() {
            let j = rng.random_range(0..=i);
            block.swap(i, j);
        }
        for &(movie, rating, t) in &block {
            if config.no_timestamp_share > 0.0 && rng.random::<f64>() < config.no_timestamp_share {
                let _ = writeln!(ratings_txt, "{}::{movie}::{rating}", u + 1);
            } else {
                let _ = writeln!(ratings_txt, "{}::{movie}::{rating}::{t}", u + 1);
            }
        }
        start = end;
    }

    Ok(SyntheticFiles {
        users: users_txt.into_bytes(),
        movies: movies_txt.into_bytes(),
        ratings: ratings_txt.into_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{DatasetKind, parse_files};

    #[test]
    fn generation_is_deterministic_and_parses() {
        let config = SyntheticConfig::default();
        let a = generate(&config).unwrap();
        assert_eq!(a, generate(&config).unwrap());
        let b = generate(&SyntheticConfig {
            seed: 7,
            ..config.clone()
        })
        .unwrap();
        assert_ne!(a.ratings, b.ratings);
        let data = parse_files(DatasetKind::Synthetic, a.into_named()).unwrap();
        assert_eq!(data.users.len(), 600);
        assert_eq!(data.movies.len(), 400);
        let n = data.ratings.len() as f64;
        assert!((n - 30_000.0).abs() < 0.05 * 30_000.0, "{n}");
        let positive = data.ratings.iter().filter(|r| r.rating > 3).count() as f64 / n;
        assert!((0.55..=0.60).contains(&positive), "{positive}");
        assert!(data.movies.iter().all(|m| m.title.is_ascii()));
        assert!(data.ratings.iter().all(|r| r.timestamp.is_some()));
        // Long tail: the most rated movie has many more ratings than the median one.
        let mut counts = vec![0u32; data.movies.len()];
        for r in &data.ratings {
            counts[r.item_row as usize] += 1;
        }
        counts.sort_unstable();
        assert!(counts[counts.len() - 1] > 5 * counts[counts.len() / 2].max(1));
    }

    #[test]
    fn some_lines_can_lack_timestamps() {
        let config = SyntheticConfig {
            no_timestamp_share: 0.2,
            ..SyntheticConfig::default()
        };
        let data = parse_files(
            DatasetKind::Synthetic,
            generate(&config).unwrap().into_named(),
        )
        .unwrap();
        let missing = data
            .ratings
            .iter()
            .filter(|r| r.timestamp.is_none())
            .count() as f64
            / data.ratings.len() as f64;
        assert!((0.15..0.25).contains(&missing), "{missing}");
    }

    #[test]
    fn ratings_depend_on_demographics() {
        // Mean rating of a genre differs between genders more than chance allows.
        let data = parse_files(
            DatasetKind::Synthetic,
            generate(&SyntheticConfig::default()).unwrap().into_named(),
        )
        .unwrap();
        let mut best_gap: f64 = 0.0;
        for genre in ML1M_GENRES {
            let mut sums = [(0.0, 0.0); 2];
            for r in &data.ratings {
                if data.movies[r.item_row as usize]
                    .genres
                    .iter()
                    .any(|g| g == genre)
                {
                    let male = usize::from(data.users[r.user_row as usize].gender == "M");
                    sums[male].0 += f64::from(r.rating);
                    sums[male].1 += 1.0;
                }
            }
            if sums[0].1 > 200.0 && sums[1].1 > 200.0 {
                best_gap = best_gap.max((sums[0].0 / sums[0].1 - sums[1].0 / sums[1].1).abs());
            }
        }
        assert!(best_gap > 0.2, "{best_gap}");
    }

    fn auc(scores: &[f64], labels: &[bool]) -> f64 {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        // Mann-Whitney with average ranks for ties.
        let mut rank_sum = 0.0;
        let mut i = 0;
        while i < order.len() {
            let mut j = i;
            while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
                j += 1;
            }
            let avg = (i + j) as f64 / 2.0 + 1.0;
            rank_sum += avg * order[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
            i = j + 1;
        }
        let pos = labels.iter().filter(|&&l| l).count() as f64;
        let neg = labels.len() as f64 - pos;
        (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
    }

    #[test]
    fn features_beat_popularity() {
        use crate::split::{Split, SplitRule, assign_splits};
        let data = parse_files(
            DatasetKind::Synthetic,
            generate(&SyntheticConfig::default()).unwrap().into_named(),
        )
        .unwrap();
        let log = crate::movielens::inputs(data.clone(), 3.0).log;
        let splits = assign_splits(&log, data.users.len(), SplitRule::Seed(1));
        let group = |row: u32| {
            let u = &data.users[row as usize];
            (u.gender.clone(), u.age, u.occupation)
        };
        let mut item_count = vec![0.0; data.movies.len()];
        let mut group_genre: std::collections::HashMap<(String, u32, u32, String), (f64, f64)> =
            Default::default();
        let mut global = (0.0, 0.0);
        for (r, s) in data.ratings.iter().zip(&splits) {
            if *s != Split::Train {
                continue;
            }
            let y = f64::from(u8::from(r.rating > 3));
            item_count[r.item_row as usize] += 1.0;
            global.0 += y;
            global.1 += 1.0;
            let (g, a, o) = group(r.user_row);
            for genre in &data.movies[r.item_row as usize].genres {
                let e = group_genre
                    .entry((g.clone(), a, o, genre.clone()))
                    .or_default();
                e.0 += y;
                e.1 += 1.0;
            }
        }
        let prior = global.0 / global.1;
        let (mut popularity, mut features, mut labels) = (vec![], vec![], vec![]);
        for (r, s) in data.ratings.iter().zip(&splits) {
            if *s != Split::Test {
                continue;
            }
            let (g, a, o) = group(r.user_row);
            let genres = &data.movies[r.item_row as usize].genres;
            let fit: f64 = genres
                .iter()
                .map(|genre| {
                    let (p, n) = group_genre
                        .get(&(g.clone(), a, o, genre.clone()))
                        .copied()
                        .unwrap_or_default();
                    (p + 5.0 * prior) / (n + 5.0)
                })
                .sum::<f64>()
                / genres.len() as f64;
            popularity.push(item_count[r.item_row as usize]);
            features.push(fit);
            labels.push(r.rating > 3);
        }
        let (pop_auc, feat_auc) = (auc(&popularity, &labels), auc(&features, &labels));
        eprintln!("test AUC: features {feat_auc:.3}, popularity {pop_auc:.3}");
        assert!(
            feat_auc > pop_auc + 0.03,
            "features {feat_auc}, popularity {pop_auc}"
        );
    }

    #[test]
    fn bad_configs_are_rejected() {
        let err = generate(&SyntheticConfig {
            users: 0,
            ..SyntheticConfig::default()
        })
        .unwrap_err();
        assert!(matches!(err, DataError::InvalidConfig { .. }));
    }
}
