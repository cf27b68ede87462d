"""The pymilvus half of the Milvus prototype (scripts/milvus-proto.sh; docs/scaling.md).

Milvus 2.3's REST API cannot make a collection with our schema, flush, or set the search width,
so these steps go through pymilvus (gRPC). The searches the doc compares with the in-process
index go through the Rust backend (examples/milvus_ann.rs); `search-grpc` adds what the same
engine does when the search width *can* be set, so that the REST API's limits and the engine's
are told apart.

    python scripts/milvus_proto.py create --dim 256 [--collection C] [--m 16] [--ef-construction 200]
    python scripts/milvus_proto.py seal [--collection C]        # flush, wait for the HNSW index
    python scripts/milvus_proto.py search-grpc --data FILE [--ef 512] [--k 256] [--consistency Strong]
    python scripts/milvus_proto.py rss --pid PID               # resident bytes of the server

Needs the pinned packages of scripts/milvus-proto.requirements.txt (its own venv, not .venv).
"""

import argparse
import json
import sys
import time

import numpy as np
from pymilvus import (
    Collection,
    CollectionSchema,
    DataType,
    FieldSchema,
    connections,
    utility,
)


def connect(args):
    connections.connect(host=args.host, port=str(args.port))


def create(args):
    connect(args)
    if utility.has_collection(args.collection):
        utility.drop_collection(args.collection)
    fields = [
        FieldSchema("id", DataType.INT64, is_primary=True, auto_id=False),
        FieldSchema("vector", DataType.FLOAT_VECTOR, dim=args.dim),
        FieldSchema("merchant", DataType.VARCHAR, max_length=256),
    ]
    schema = CollectionSchema(fields, enable_dynamic_field=True)
    c = Collection(args.collection, schema, consistency_level="Strong")
    c.create_index(
        "vector",
        {
            "index_type": "HNSW",
            "metric_type": "IP",
            "params": {"M": args.m, "efConstruction": args.ef_construction},
        },
    )
    c.load()
    print(json.dumps({"created": args.collection, "dim": args.dim, "M": args.m,
                      "efConstruction": args.ef_construction}))


def seal(args):
    connect(args)
    c = Collection(args.collection)
    t = time.time()
    c.flush()
    flushed = time.time() - t
    rows = c.num_entities
    utility.wait_for_index_building_complete(args.collection)
    # The query node must swap the growing segments for the sealed, indexed ones, all of them.
    deadline = time.time() + args.timeout
    while True:
        segs = utility.get_query_segment_info(args.collection)
        states = [(s.state, s.index_name, s.num_rows) for s in segs]
        sealed = [s for s in segs if s.state == 3 and s.index_name]  # 3 = Sealed
        if segs and len(sealed) == len(segs) and sum(s.num_rows for s in segs) == rows:
            break
        if time.time() > deadline:
            sys.exit(f"segments not all sealed and indexed after {args.timeout} s: {states}")
        time.sleep(1)
    print(json.dumps({"sealed": args.collection, "flush_s": round(flushed, 2),
                      "total_s": round(time.time() - t, 2),
                      "segments": len(segs), "rows": sum(s.num_rows for s in segs),
                      "num_entities": rows}))


def read_dump(path):
    with open(path, "rb") as f:
        head = f.read(24)
        assert head[:8] == b"SNSCALE1", f"{path} is not a footprint dump"
        n = int.from_bytes(head[8:16], "little")
        dim = int.from_bytes(head[16:20], "little")
        nq = int.from_bytes(head[20:24], "little")
        row = np.dtype([("key", "<u8"), ("m", "<u2"), ("c", "u1"), ("v", "<f4", (dim,))])
        items = np.frombuffer(f.read(n * row.itemsize), dtype=row)
        queries = np.frombuffer(f.read(nq * dim * 4), dtype="<f4").reshape(nq, dim)
    return items, queries


def search_grpc(args):
    connect(args)
    c = Collection(args.collection)
    items, queries = read_dump(args.data)
    keys = items["key"].astype(np.int64)
    vecs = np.ascontiguousarray(items["v"])
    cases = [
        ("unfiltered", None, np.ones(len(keys), bool)),
        ("filter ~10% (category)", 'json_contains_any(tags, ["category:c3"])', items["c"] == 3),
        ("filter ~1% (merchant)", 'merchant in ["merchant-007"]', items["m"] == 7),
    ]
    out = []
    for name, expr, mask in cases:
        lat, recall = [], 0.0
        sub_keys, sub_vecs = keys[mask], vecs[mask]
        for q in queries:
            scores = sub_vecs @ q
            top = np.argpartition(-scores, min(args.k, len(scores) - 1))[: args.k]
            truth = set(sub_keys[top].tolist())
            t = time.perf_counter()
            res = c.search(
                [q.tolist()], "vector",
                {"metric_type": "IP", "params": {"ef": max(args.ef, args.k)}},
                limit=args.k, expr=expr, output_fields=[],
                consistency_level=args.consistency,
            )
            lat.append((time.perf_counter() - t) * 1e3)
            got = [h.id for h in res[0]]
            recall += len(truth.intersection(got)) / max(len(truth), 1)
        recall /= len(queries)
        lat.sort()
        p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
        print(f"  grpc ef={args.ef} {args.consistency:<10} {name:<24} passing {int(mask.sum()):>7}  "
              f"recall@{args.k} {recall:.4f}  p50 {p50:.2f} ms  p99 {p99:.2f} ms", file=sys.stderr)
        out.append({"case": name, "passing": int(mask.sum()), "recall": recall,
                    "p50_ms": p50, "p99_ms": p99})
    print(json.dumps({"mode": "search-grpc", "ef": args.ef, "consistency": args.consistency,
                      "k": args.k, "search": out}))


def rss(args):
    with open(f"/proc/{args.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                print(json.dumps({"pid": args.pid, "rss_bytes": int(line.split()[1]) * 1024}))
                return
    sys.exit("no VmRSS")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=19530)
    p.add_argument("--collection", default="snapshop_proto")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("create")
    s.add_argument("--dim", type=int, required=True)
    s.add_argument("--m", type=int, default=16)
    s.add_argument("--ef-construction", type=int, default=200)
    s = sub.add_parser("seal")
    s.add_argument("--timeout", type=float, default=600)
    s = sub.add_parser("search-grpc")
    s.add_argument("--data", required=True)
    s.add_argument("--k", type=int, default=256)
    s.add_argument("--ef", type=int, default=512)
    s.add_argument("--consistency", default="Strong",
                   choices=["Strong", "Bounded", "Session", "Eventually"])
    s = sub.add_parser("rss")
    s.add_argument("--pid", type=int, required=True)
    args = p.parse_args()
    {"create": create, "seal": seal, "search-grpc": search_grpc, "rss": rss}[args.cmd](args)


if __name__ == "__main__":
    main()
