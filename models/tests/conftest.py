"""Make ``snapshop_ml`` importable when pytest is run from anywhere (plain ``pytest`` too)."""

import sys
from pathlib import Path

MODELS = str(Path(__file__).resolve().parent.parent)
if MODELS not in sys.path:
    sys.path.insert(0, MODELS)
