#!/usr/bin/env bash
# Measures the service's per-stage search latency for a 12 MP phone-sized JPEG against the
# benchmark's test gallery, the index build time and the first pass's recall@256 against exact
# search (README, "Measurements"). Needs the release build and data/street2shop (scripts/setup.sh
# and the model pipeline's data generator). Extra arguments go to `snapshop bench`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[ -f scripts/env.sh ] && . scripts/env.sh
mkdir -p target/bench
IMG="target/bench/street_12mp.jpg"
if [ ! -f "$IMG" ]; then
  # A street photo of the test split, upscaled to 4000x3000 with sensor-like noise, so that the
  # file is as large and as costly to decode as a real 12 MP phone photo.
  .venv/bin/python - "$IMG" <<'PY'
import sys, glob
import numpy as np
from PIL import Image
src = sorted(glob.glob("data/street2shop/images/test/*_user_0.jpg"))[0]
img = Image.open(src).convert("RGB").resize((4000, 3000), Image.BICUBIC)
a = np.asarray(img).astype(np.int16)
a = a + np.random.default_rng(0).integers(-6, 7, size=a.shape, dtype=np.int16)
Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(sys.argv[1], quality=92)
print("made", sys.argv[1], "from", src)
PY
fi
exec ./target/release/snapshop bench --manifest data/street2shop/manifest.csv --split test \
  --image "$IMG" --output target/bench/bench-report.json "$@"
