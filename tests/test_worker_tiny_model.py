"""The tiny-model builder: deterministic, Qwen3-VL's chat format, loadable by transformers.

vLLM loading it is covered by every engine test; here transformers loads it, in
the worker's own environment (the gateway environment has no torch).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from localstack.processes import WORKER_PYTHON
from worker.profiles import REPO_ROOT, TINY_MODEL_DIR

CHECK_SCRIPT = r"""
import json, sys
from PIL import Image
from transformers import AutoProcessor, Qwen3VLForConditionalGeneration
import torch

path = sys.argv[1]
processor = AutoProcessor.from_pretrained(path)
model = Qwen3VLForConditionalGeneration.from_pretrained(path)
messages = [
    {"role": "system", "content": "You are a shopping assistant."},
    {"role": "user", "content": [
        {"type": "image"},
        {"type": "text", "text": "Is this bag real leather?"},
    ]},
]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
image = Image.new("RGB", (640, 480), (120, 80, 40))
inputs = processor(text=[prompt], images=[image], return_tensors="pt")
with torch.no_grad():
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
print(json.dumps({"prompt": prompt, "image_tokens": image_tokens,
                  "new_tokens": int(out.shape[1] - inputs["input_ids"].shape[1])}))
"""


def _worker_python(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "worker" / "boot"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [str(WORKER_PYTHON), *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "model"
    _worker_python("-m", "worker.tiny_model", str(out))
    return out


def test_builder_is_deterministic(rebuilt: Path) -> None:
    assert TINY_MODEL_DIR.exists(), "make install builds the tiny model"
    for name in ("model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"):
        assert _digest(rebuilt / name) == _digest(TINY_MODEL_DIR / name), name


def test_checkpoint_loads_in_transformers_with_qwen3_vl_chat_format(rebuilt: Path) -> None:
    result = json.loads(_worker_python("-c", CHECK_SCRIPT, str(rebuilt)).strip().splitlines()[-1])
    assert result["prompt"] == (
        "<|im_start|>system\nYou are a shopping assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "Is this bag real leather?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert result["image_tokens"] == 300  # (640/32) * (480/32)
    assert result["new_tokens"] >= 1
