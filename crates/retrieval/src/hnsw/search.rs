//! Graph search shared by building and querying: the link lists of a layer, the visited set, the greedy
//! descent through the upper layers and the beam search of one layer (`ef` candidates).

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU32, Ordering as MemoryOrder};

/// One slot of a link list: a plain `u32` once built (or mapped from a file), an atomic while building.
pub(crate) trait Slot: Sync {
    fn get(&self) -> u32;
}

impl Slot for u32 {
    #[inline(always)]
    fn get(&self) -> u32 {
        *self
    }
}

impl Slot for AtomicU32 {
    #[inline(always)]
    fn get(&self) -> u32 {
        self.load(MemoryOrder::Relaxed)
    }
}

/// The link lists of every layer. A list is a count followed by `capacity` slots: layer 0 lists hold up
/// to `m0` links, upper-layer lists up to `m`. Node `i` has `levels[i]` upper layers, whose lists are
/// stored one after the other from list number `upper_start[i]` of `upper`.
pub(crate) struct Links<'a, S> {
    pub(crate) level0: &'a [S],
    pub(crate) upper: &'a [S],
    pub(crate) upper_start: &'a [u32],
    pub(crate) m: usize,
    pub(crate) m0: usize,
}

impl<'a, S: Slot> Links<'a, S> {
    /// The whole list (count slot first) of `node` on `level`.
    #[inline(always)]
    pub(crate) fn list(&self, node: u32, level: usize) -> &'a [S] {
        if level == 0 {
            let start = node as usize * (self.m0 + 1);
            &self.level0[start..start + self.m0 + 1]
        } else {
            let list = self.upper_start[node as usize] as usize + level - 1;
            let start = list * (self.m + 1);
            &self.upper[start..start + self.m + 1]
        }
    }

    /// The links of `node` on `level`.
    #[inline(always)]
    pub(crate) fn neighbours(&self, node: u32, level: usize) -> impl Iterator<Item = u32> + 'a {
        let list = self.list(node, level);
        let count = (list[0].get() as usize).min(list.len() - 1);
        list[1..=count].iter().map(Slot::get)
    }
}

/// Scores graph nodes against one query (or one node being inserted): higher is nearer.
pub(crate) trait Scorer {
    fn score(&self, node: u32) -> f32;
    /// Hints that `node`'s vector is about to be read.
    fn prefetch(&self, node: u32);
}

/// A node and its score, ordered by score (ties by the lower node first).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Near {
    pub(crate) score: f32,
    pub(crate) node: u32,
}

impl Eq for Near {}

impl Ord for Near {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.node.cmp(&self.node))
    }
}

impl PartialOrd for Near {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Per-thread buffers of a search, reused from one search to the next.
#[derive(Default)]
pub(crate) struct Scratch {
    /// Generation tag per node: a node is visited when its tag equals `generation`.
    tags: Vec<u16>,
    generation: u16,
    candidates: BinaryHeap<Near>,
    results: BinaryHeap<Reverse<Near>>,
    fresh: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch buffers.
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|s| f(&mut s.borrow_mut()))
}

impl Scratch {
    /// Starts a new search over `nodes` nodes: nothing visited.
    fn clear_visited(&mut self, nodes: usize) {
        if self.tags.len() < nodes {
            self.tags.resize(nodes, 0);
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.tags.fill(0);
            self.generation = 1;
        }
    }

    /// Marks `node` visited; false when it already was.
    #[inline(always)]
    fn visit(&mut self, node: u32) -> bool {
        let tag = &mut self.tags[node as usize];
        let fresh = *tag != self.generation;
        *tag = self.generation;
        fresh
    }
}

/// Moves from `start` to ever better neighbours on `level` until none is better.
pub(crate) fn greedy<S: Slot>(
    links: &Links<'_, S>,
    start: Near,
    level: usize,
    scorer: &impl Scorer,
) -> Near {
    let mut best = start;
    loop {
        let mut moved = false;
        for node in links.neighbours(best.node, level) {
            let score = scorer.score(node);
            if score > best.score {
                best = Near { score, node };
                moved = true;
            }
        }
        if !moved {
            return best;
        }
    }
}

/// Beam search of one layer from `start`: the best `ef` nodes found, best first, in `out`.
pub(crate) fn search_layer<S: Slot>(
    links: &Links<'_, S>,
    start: Near,
    ef: usize,
    level: usize,
    scorer: &impl Scorer,
    scratch: &mut Scratch,
    out: &mut Vec<Near>,
) {
    scratch.clear_visited(links.level0.len() / (links.m0 + 1));
    scratch.candidates.clear();
    scratch.results.clear();
    scratch.visit(start.node);
    scratch.candidates.push(start);
    scratch.results.push(Reverse(start));
    while let Some(current) = scratch.candidates.pop() {
        let worst = scratch
            .results
            .peek()
            .map_or(f32::NEG_INFINITY, |r| r.0.score);
        if current.score < worst && scratch.results.len() >= ef {
            break;
        }
        let mut fresh = std::mem::take(&mut scratch.fresh);
        fresh.clear();
        for node in links.neighbours(current.node, level) {
            if scratch.visit(node) {
                scorer.prefetch(node);
                fresh.push(node);
            }
        }
        for &node in &fresh {
            let score = scorer.score(node);
            let worst = scratch
                .results
                .peek()
                .map_or(f32::NEG_INFINITY, |r| r.0.score);
            if scratch.results.len() < ef || score > worst {
                let near = Near { score, node };
                scratch.candidates.push(near);
                scratch.results.push(Reverse(near));
                if scratch.results.len() > ef {
                    scratch.results.pop();
                }
            }
        }
        scratch.fresh = fresh;
    }
    out.clear();
    out.extend(scratch.results.drain().map(|r| r.0));
    out.sort_unstable_by(|a, b| b.cmp(a));
}

/// The neighbour-selection heuristic of HNSW (Malkov and Yashunin, algorithm 4, without extension):
/// walking `candidates` from the nearest, keep one unless an already kept node is nearer to it than
/// the base node is, until `m` are kept. `candidates` is sorted best first; `similarity` compares two
/// nodes.
pub(crate) fn select_neighbours(
    candidates: &[Near],
    m: usize,
    similarity: impl Fn(u32, u32) -> f32,
    out: &mut Vec<Near>,
) {
    out.clear();
    if candidates.len() <= m {
        out.extend_from_slice(candidates);
        return;
    }
    for &candidate in candidates {
        if out.len() >= m {
            break;
        }
        if out
            .iter()
            .all(|kept| similarity(kept.node, candidate.node) <= candidate.score)
        {
            out.push(candidate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points on a line; the score of a node is minus its distance to the query position.
    struct Line {
        positions: Vec<f32>,
        query: f32,
    }

    impl Scorer for Line {
        fn score(&self, node: u32) -> f32 {
            -(self.positions[node as usize] - self.query).abs()
        }
        fn prefetch(&self, _: u32) {}
    }

    #[test]
    fn beam_search_walks_a_chain_to_the_nearest_nodes() {
        // Layer 0 is a chain 0 - 1 - 2 - 3 - 4 - 5 (m0 = 2), node i at position i.
        let m0 = 2;
        let mut level0 = vec![0u32; 6 * (m0 + 1)];
        for i in 0..6u32 {
            let links: Vec<u32> = [i.checked_sub(1), (i < 5).then_some(i + 1)]
                .into_iter()
                .flatten()
                .collect();
            let at = i as usize * (m0 + 1);
            level0[at] = links.len() as u32;
            level0[at + 1..at + 1 + links.len()].copy_from_slice(&links);
        }
        let links = Links {
            level0: &level0,
            upper: &[],
            upper_start: &[0; 7],
            m: 1,
            m0,
        };
        let scorer = Line {
            positions: (0..6).map(|i| i as f32).collect(),
            query: 4.2,
        };
        let start = Near {
            score: scorer.score(0),
            node: 0,
        };
        assert_eq!(greedy(&links, start, 0, &scorer).node, 4);
        let mut out = Vec::new();
        let mut scratch = Scratch::default();
        search_layer(&links, start, 3, 0, &scorer, &mut scratch, &mut out);
        // Nearest to 4.2: node 4 (0.2), node 5 (0.8), node 3 (1.2).
        assert_eq!(
            out.iter().map(|n| n.node).collect::<Vec<_>>(),
            vec![4, 5, 3]
        );
        // A second search with the same scratch starts from a clean visited set.
        search_layer(&links, start, 1, 0, &scorer, &mut scratch, &mut out);
        assert_eq!(out.iter().map(|n| n.node).collect::<Vec<_>>(), vec![4]);
    }

    #[test]
    fn heuristic_skips_candidates_shadowed_by_a_kept_one() {
        // Base at 0; candidates at 1.0, 1.1 and -2.0 (scores = minus distance to the base).
        let positions = [1.0f32, 1.1, -2.0];
        let candidates = [
            Near {
                score: -1.0,
                node: 0,
            },
            Near {
                score: -1.1,
                node: 1,
            },
            Near {
                score: -2.0,
                node: 2,
            },
        ];
        let similarity = |a: u32, b: u32| -(positions[a as usize] - positions[b as usize]).abs();
        let mut out = Vec::new();
        select_neighbours(&candidates, 2, similarity, &mut out);
        // Node 1 is 0.1 from kept node 0 but 1.1 from the base: shadowed. Node 2 is on the other side.
        assert_eq!(out.iter().map(|n| n.node).collect::<Vec<_>>(), vec![0, 2]);
        // With room for all, all are kept.
        select_neighbours(&candidates, 3, similarity, &mut out);
        assert_eq!(out.len(), 3);
    }
}
