"""make bench (image tokens): the token estimate of a phone photo, before and after issue
27, against the worker's own count.

For each photo size: the estimate before (the photo's own sides on the 32-pixel grid, the
photo sent as it was), the size the gateway sends now (detail high/auto policy,
docs/IMAGES.md) and its estimate, and the worker's count: the checkpoint's own image
processor (transformers' Qwen2VLImageProcessor, run in the worker's virtual environment
on an image of the size sent) for the tiny CPU model (.models/tiny-qwen3-vl, max_pixels
2,097,152) and for Qwen3-VL-8B-Instruct's bounds (max_pixels 16,777,216).
tests/test_images_engine.py checks the same counts against the real engine's
prompt_tokens.

    python -m loadtest.bench.image_tokens

Writes loadtest/results/bench-image-tokens.json.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from gateway.ratelimit.estimate import PixelBounds, image_tokens
from gateway.validation.detail import DetailBudgets, sent_size

ROOT = Path(__file__).resolve().parents[2]
SIZES = [(4032, 3024), (3024, 4032), (4284, 5712), (1920, 1080), (1280, 960)]
MODELS = {
    "tiny": PixelBounds(min_pixels=65_536, max_pixels=2_097_152),
    "8b": PixelBounds(min_pixels=65_536, max_pixels=16_777_216),
}
BUDGETS = DetailBudgets(low=512 * 512, high=2048 * 32 * 32)

# Run by the worker's Python: the processor's own count of image tokens for each size.
_PROCESSOR = """
import json, sys
from PIL import Image
from transformers import AutoImageProcessor
processor = AutoImageProcessor.from_pretrained(sys.argv[1])
merge = processor.merge_size ** 2
out = []
for width, height, max_pixels in json.loads(sys.argv[2]):
    grid = processor(images=[Image.new("RGB", (width, height))], return_tensors="pt",
                     size={"shortest_edge": 65536, "longest_edge": max_pixels})["image_grid_thw"]
    out.append(int(grid.prod()) // merge)
print(json.dumps(out))
"""


def worker_counts(jobs: list[tuple[int, int, int]]) -> list[int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "worker" / "boot")}
    python = ROOT / ".venv-worker" / "bin" / "python"
    model = ROOT / ".models" / "tiny-qwen3-vl"
    done = subprocess.run(
        [str(python), "-c", _PROCESSOR, str(model), json.dumps(jobs)],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    counts: list[int] = json.loads(done.stdout.strip().splitlines()[-1])
    return counts


def main() -> None:
    rows: list[dict[str, Any]] = []
    jobs = []
    for width, height in SIZES:
        sent = sent_size(width, height, 1, "high", BUDGETS)
        for name, bounds in MODELS.items():
            rows.append({
                "photo": f"{width}x{height}", "model": name, "sent": f"{sent[0]}x{sent[1]}",
                "before": round(width / 32) * round(height / 32),
                "after": image_tokens(*sent, bounds),
            })  # fmt: skip
            # Before, the photo went as it was; now, at the size sent.
            jobs += [(width, height, bounds.max_pixels), (*sent, bounds.max_pixels)]
    counts = worker_counts(jobs)
    print(f"{'photo':>10} {'model':>5} | {'before':>7} {'worker':>7} {'error':>7} | "
          f"{'sent as':>10} {'after':>6} {'worker':>7} {'error':>6}")  # fmt: skip
    for row, (as_was, as_sent) in zip(rows, zip(counts[::2], counts[1::2], strict=True),
                                      strict=True):  # fmt: skip
        row["worker_before"], row["worker_after"] = as_was, as_sent
        print(f"{row['photo']:>10} {row['model']:>5} | {row['before']:>7} {as_was:>7} "
              f"{row['before'] / as_was - 1:>+7.0%} | {row['sent']:>10} {row['after']:>6} "
              f"{as_sent:>7} {row['after'] / as_sent - 1:>+6.1%}")  # fmt: skip
    out = ROOT / "loadtest" / "results" / "bench-image-tokens.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
