"""Are there ties at the top of the exact ranking that `cargo xtask bench-index` wrote?

    python xtask/bench/ties.py [DIR=target/bench-index] [--queries 100]

For the first queries, scores every item exactly (numpy, in blocks of 1M rows) and counts the items
scoring within 1e-6 of the 10th and of the 100th of `truth.npy`. More than 10 (or 100) means ties,
which an approximate index may break either way, lowering its measured recall without missing anything.
"""
import argparse

import numpy as np


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir", nargs="?", default="target/bench-index")
    p.add_argument("--queries", type=int, default=100)
    a = p.parse_args()
    items = np.load(f"{a.dir}/items.npy", mmap_mode="r")
    queries = np.load(f"{a.dir}/queries.npy")[: a.queries]
    truth = np.load(f"{a.dir}/truth.npy")[: a.queries]
    scores = np.empty((len(queries), items.shape[0]), dtype=np.float32)
    for start in range(0, items.shape[0], 1_000_000):
        block = np.asarray(items[start : start + 1_000_000])
        scores[:, start : start + len(block)] = queries @ block.T
    for k in (10, 100):
        kth = np.take_along_axis(scores, truth[:, k - 1 : k], 1)
        within = (scores >= kth - 1e-6).sum(1)
        print(f"top-{k}: items within 1e-6 of the k-th score: max {within.max()}, "
              f"queries with more than {k}: {(within > k).sum()} of {len(queries)}")


if __name__ == "__main__":
    main()
