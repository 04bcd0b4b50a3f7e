"""The choices the ``kamim linprobe``/``kamim sweep`` flags offer, without importing torch, so a
mistyped flag is answered at once. They mirror features.py and linprobe.py; tests/test_newcomer.py
checks they agree."""

from __future__ import annotations

POOLS = ("avg", "cls")
RESIZES = ("crop", "squash")
PROBE_RECIPES = ("fast", "original")
FINETUNE_RECIPE_NAMES = ("kamim", "original")
