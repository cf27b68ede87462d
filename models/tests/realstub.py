"""A stand-in for the real-photo benchmark in tests: another synthetic set with renamed products."""

import csv


def real_like(src, dst):
    """Write `dst`, a manifest of `src`'s images whose products cannot be confused with those of
    another synthetic set (ids prefixed `rp-`, as the real-photo benchmark's are)."""
    rows = list(csv.DictReader(src.open()))
    with dst.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({**r, "image": str(src.parent / r["image"]), "product_id": "rp-" + r["product_id"]})
