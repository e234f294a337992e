"""faiss-cpu's HNSW on the vectors `cargo xtask bench-index` wrote: the same figures as `ours.json`.

    python xtask/bench/faiss_index.py [DIR=target/bench-index] [--m 16] [--ef-construction 100]
                                      [--ef 50,100,200,400]

Needs `pip install faiss-cpu numpy` (measured with faiss-cpu 1.15.1). Inner product on the same
L2-normalised rows (`IndexHNSWFlat` with `METRIC_INNER_PRODUCT`), queries as one batch over all
OpenMP threads and one at a time; recall against `truth.npy`, the exact top-100 of our exact index.
Writes `faiss.json` beside the vectors.
"""
import argparse
import json
import os
import resource
import time

import faiss
import numpy as np


def recall(got, truth, k):
    hits = sum(len(set(g[:k]) & set(t[:k])) for g, t in zip(got.tolist(), truth.tolist()))
    return hits / (k * len(truth))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir", nargs="?", default="target/bench-index")
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=100)
    p.add_argument("--ef", default="50,100,200,400")
    a = p.parse_args()
    items = np.load(os.path.join(a.dir, "items.npy"))
    queries = np.load(os.path.join(a.dir, "queries.npy"))
    truth = np.load(os.path.join(a.dir, "truth.npy"))
    k = truth.shape[1]
    threads = faiss.omp_get_max_threads()
    print(f"faiss {faiss.__version__}: items {items.shape}, queries {len(queries)}, threads {threads}")
    index = faiss.IndexHNSWFlat(items.shape[1], a.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = a.ef_construction
    t = time.perf_counter()
    index.add(items)
    build_s = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"faiss: build {build_s:.1f} s, peak RSS {peak:.0f} MiB")
    rows = []
    for ef in [int(x) for x in a.ef.split(",")]:
        index.hnsw.efSearch = ef
        t = time.perf_counter()
        _, got = index.search(queries, k)
        batch_s = time.perf_counter() - t
        t = time.perf_counter()
        for q in range(len(queries)):
            index.search(queries[q : q + 1], k)
        single_s = time.perf_counter() - t
        row = {
            "ef": ef,
            "queries_per_s_batch": len(queries) / batch_s,
            "queries_per_s_single": len(queries) / single_s,
            "recall_at_10": recall(got, truth, 10),
            "recall_at_100": recall(got, truth, k),
        }
        print(
            f"ef {ef:>4}: {row['queries_per_s_batch']:>7.0f} queries/s batched, "
            f"{row['queries_per_s_single']:>7.0f} one at a time, recall@10 {row['recall_at_10']:.4f}, "
            f"recall@100 {row['recall_at_100']:.4f}"
        )
        rows.append(row)
    report = {
        "engine": f"faiss-cpu {faiss.__version__} IndexHNSWFlat",
        "items": int(items.shape[0]), "dim": int(items.shape[1]), "queries": int(len(queries)),
        "threads": threads, "m": a.m, "ef_construction": a.ef_construction,
        "build_s": build_s, "peak_rss_mib": peak, "search": rows,
    }
    with open(os.path.join(a.dir, "faiss.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
