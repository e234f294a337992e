//! Building the graph: levels drawn from (seed, node), then every node inserted in parallel.
//!
//! Link lists are atomics, so that searches read them while other threads write. A per-node lock
//! serialises the writers of one node's lists (its own insertion and the back-links other nodes add).
//! A reader may see a list half rewritten; every slot still holds a valid node, so the search stays
//! correct and the graph's quality is unaffected in practice (the same trade hnswlib makes).

use super::distance::DotFn;
use super::search::{Links, Near, Scorer, search_layer, select_neighbours, with_scratch};
use crate::error::{Error, Result};
use parking_lot::Mutex;
use rayon::prelude::*;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// Highest layer a node may get.
pub(crate) const MAX_LEVEL: usize = 15;

/// The vectors a graph is built over: `n` rows of `dim`, plus the extra coordinate of each item that
/// turns inner-product search into nearest-neighbour search (see the module docs of `hnsw`).
pub(crate) struct Points<'a> {
    pub(crate) vectors: &'a [f32],
    pub(crate) extra: &'a [f32],
    pub(crate) dim: usize,
    pub(crate) dot: DotFn,
}

impl<'a> Points<'a> {
    #[inline(always)]
    pub(crate) fn row(&self, i: u32) -> &'a [f32] {
        let start = i as usize * self.dim;
        &self.vectors[start..start + self.dim]
    }

    /// Similarity of two items in the augmented space.
    #[inline(always)]
    fn between(&self, a: u32, b: u32) -> f32 {
        (self.dot)(self.row(a), self.row(b)) + self.extra[a as usize] * self.extra[b as usize]
    }

    #[inline(always)]
    pub(crate) fn prefetch(&self, i: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let start = i as usize * self.dim;
            let row = self.vectors[start..start + self.dim].as_ptr();
            for line in (0..self.dim).step_by(16) {
                // SAFETY: a prefetch never faults; the address is inside `vectors`.
                unsafe { _mm_prefetch(row.add(line) as *const i8, _MM_HINT_T0) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = i;
    }
}

/// The finished graph, as plain arrays (the layout of `search::Links`).
pub(crate) struct Graph {
    pub(crate) levels: Vec<u8>,
    pub(crate) upper_start: Vec<u32>,
    pub(crate) level0: Vec<u32>,
    pub(crate) upper: Vec<u32>,
    pub(crate) entry: u32,
    pub(crate) max_level: usize,
}

/// Build parameters (checked by the caller).
pub(crate) struct Params {
    pub(crate) m: usize,
    pub(crate) ef_construction: usize,
    pub(crate) seed: u64,
}

/// The level of `node`: `floor(-ln(u) / ln(m))` for `u` uniform in (0, 1] drawn from (seed, node).
pub(crate) fn level_of(seed: u64, node: u32, m: usize) -> u8 {
    let bits = splitmix64(seed ^ (node as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let u = ((bits >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let level = (-u.ln() / (m as f64).ln()).floor();
    (level as usize).min(MAX_LEVEL) as u8
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Builds the graph over all points, calling `progress` with the number of nodes inserted so far
/// (about every 1,024 insertions, from any thread).
pub(crate) fn build(
    points: &Points<'_>,
    params: &Params,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Graph> {
    let n = points.vectors.len() / points.dim;
    let m0 = 2 * params.m;
    let levels: Vec<u8> = (0..n as u32)
        .into_par_iter()
        .map(|i| level_of(params.seed, i, params.m))
        .collect();
    let mut upper_start = Vec::with_capacity(n + 1);
    let mut total = 0u64;
    for &level in &levels {
        upper_start.push(total as u32);
        total += level as u64;
    }
    upper_start.push(total as u32);
    if total * (params.m as u64 + 1) > u32::MAX as u64 {
        return Err(Error::HnswParam {
            name: "items",
            value: n,
            expected: "few enough that the upper layers fit 2^32 link slots",
        });
    }
    let builder = Builder {
        points,
        levels: &levels,
        upper_start: &upper_start,
        level0: atomics(n * (m0 + 1)),
        upper: atomics(total as usize * (params.m + 1)),
        locks: (0..n).map(|_| Mutex::new(())).collect(),
        top: Mutex::new(None),
        m: params.m,
        m0,
        ef: params.ef_construction,
        inserted: AtomicUsize::new(0),
        progress,
    };
    if n > 0 {
        builder.insert(0);
        (1..n as u32)
            .into_par_iter()
            .with_min_len(64)
            .for_each(|node| builder.insert(node));
    }
    let (entry, max_level) = builder.top.lock().unwrap_or((0, 0));
    let Builder { level0, upper, .. } = builder;
    Ok(Graph {
        levels,
        upper_start,
        level0: plain(level0),
        upper: plain(upper),
        entry,
        max_level,
    })
}

fn atomics(len: usize) -> Vec<AtomicU32> {
    (0..len).map(|_| AtomicU32::new(0)).collect()
}

fn plain(slots: Vec<AtomicU32>) -> Vec<u32> {
    // Same size and alignment: the standard library collects this in place.
    slots.into_iter().map(AtomicU32::into_inner).collect()
}

struct Builder<'a> {
    points: &'a Points<'a>,
    levels: &'a [u8],
    upper_start: &'a [u32],
    level0: Vec<AtomicU32>,
    upper: Vec<AtomicU32>,
    locks: Vec<Mutex<()>>,
    /// Entry point and its level; `None` before the first insertion.
    top: Mutex<Option<(u32, usize)>>,
    m: usize,
    m0: usize,
    ef: usize,
    inserted: AtomicUsize,
    progress: &'a (dyn Fn(usize) + Sync),
}

/// Scores nodes against an inserted node.
struct NodeScorer<'a> {
    points: &'a Points<'a>,
    node: u32,
}

impl Scorer for NodeScorer<'_> {
    #[inline(always)]
    fn score(&self, other: u32) -> f32 {
        self.points.between(self.node, other)
    }

    #[inline(always)]
    fn prefetch(&self, other: u32) {
        self.points.prefetch(other);
    }
}

impl Builder<'_> {
    fn links(&self) -> Links<'_, AtomicU32> {
        Links {
            level0: &self.level0,
            upper: &self.upper,
            upper_start: self.upper_start,
            m: self.m,
            m0: self.m0,
        }
    }

    fn capacity(&self, level: usize) -> usize {
        if level == 0 { self.m0 } else { self.m }
    }

    fn insert(&self, node: u32) {
        let level = self.levels[node as usize] as usize;
        let mut top = self.top.lock();
        let Some((entry, max_level)) = *top else {
            *top = Some((node, level));
            return;
        };
        // A node above the current top keeps the lock until it becomes the new entry point.
        let hold = if level > max_level {
            Some(top)
        } else {
            drop(top);
            None
        };
        let links = self.links();
        let scorer = NodeScorer {
            points: self.points,
            node,
        };
        let mut current = Near {
            score: scorer.score(entry),
            node: entry,
        };
        for l in (level + 1..=max_level).rev() {
            current = super::search::greedy(&links, current, l, &scorer);
        }
        let mut found = Vec::new();
        let mut chosen = Vec::new();
        for l in (0..=level.min(max_level)).rev() {
            with_scratch(|scratch| {
                search_layer(&links, current, self.ef, l, &scorer, scratch, &mut found);
            });
            current = found[0];
            // As faiss does: up to 2M links on layer 0 for the new node too (hnswlib keeps M),
            // a denser bottom layer that reaches a given recall with a smaller ef.
            select_neighbours(
                &found,
                self.capacity(l),
                |a, b| self.points.between(a, b),
                &mut chosen,
            );
            self.write_list(node, l, chosen.iter().map(|c| c.node));
            for c in &chosen {
                self.link_back(c.node, node, c.score, l);
            }
        }
        if let Some(mut top) = hold {
            *top = Some((node, level));
        }
        let done = self.inserted.fetch_add(1, Ordering::Relaxed) + 2;
        if done.is_multiple_of(1024) {
            (self.progress)(done);
        }
    }

    /// Replaces the links of `node` on `level` (its lock held by the caller, or none needed).
    fn store_list(&self, node: u32, level: usize, links: impl Iterator<Item = u32>) {
        let list = self.links().list(node, level);
        let mut count = 0;
        for (slot, link) in list[1..].iter().zip(links) {
            slot.store(link, Ordering::Relaxed);
            count += 1;
        }
        list[0].store(count, Ordering::Release);
    }

    fn write_list(&self, node: u32, level: usize, links: impl Iterator<Item = u32>) {
        let _guard = self.locks[node as usize].lock();
        self.store_list(node, level, links);
    }

    /// Adds `new` (at similarity `score`) to the links of `node` on `level`; a full list is pruned
    /// back to its capacity with the selection heuristic.
    fn link_back(&self, node: u32, new: u32, score: f32, level: usize) {
        let capacity = self.capacity(level);
        let _guard = self.locks[node as usize].lock();
        let list = self.links().list(node, level);
        let count = list[0].load(Ordering::Relaxed) as usize;
        if count < capacity {
            list[count + 1].store(new, Ordering::Relaxed);
            list[0].store(count as u32 + 1, Ordering::Release);
            return;
        }
        let mut candidates: Vec<Near> = list[1..=count]
            .iter()
            .map(|slot| {
                let other = slot.load(Ordering::Relaxed);
                Near {
                    score: self.points.between(node, other),
                    node: other,
                }
            })
            .collect();
        candidates.push(Near { score, node: new });
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        let mut kept = Vec::with_capacity(capacity);
        select_neighbours(
            &candidates,
            capacity,
            |a, b| self.points.between(a, b),
            &mut kept,
        );
        self.store_list(node, level, kept.iter().map(|k| k.node));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_the_geometric_law_and_the_seed() {
        let m = 16;
        let levels: Vec<u8> = (0..100_000).map(|i| level_of(7, i, m)).collect();
        let above0 = levels.iter().filter(|&&l| l >= 1).count() as f64 / 1e5;
        let above1 = levels.iter().filter(|&&l| l >= 2).count() as f64 / 1e5;
        // P(level >= k) = m^-k: 1/16 and 1/256.
        assert!((above0 - 1.0 / 16.0).abs() < 0.004, "{above0}");
        assert!((above1 - 1.0 / 256.0).abs() < 0.001, "{above1}");
        assert_eq!(levels[123], level_of(7, 123, m));
        let other: Vec<u8> = (0..1000).map(|i| level_of(8, i, m)).collect();
        assert_ne!(&levels[..1000], &other[..]);
    }
}
