"""Build a tiny, random-weight Qwen3-VL checkpoint that vLLM and transformers both load.

No weights can be downloaded on our machines, so development and CI serve this
model instead of Qwen/Qwen3-VL-8B-Instruct. It has Qwen3-VL's architecture,
processor, special tokens and chat format, scaled down (2 text layers, hidden
128, head_dim 64; 2 vision layers, patch 16, merge 2). Its answers are noise.

The build is deterministic: a fixed seed for the weights and a tokenizer
trained on a fixed corpus. Run it in the worker's virtual environment:

    python -m worker.tiny_model OUTPUT_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

SEED = 20261124
BUILDER_VERSION = 1  # bump when the checkpoint's contents change

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
VOCAB_SIZE = 1024  # tokenizer size; the embedding is padded to a multiple of 64

# Qwen3-VL's message format: <|im_start|>role\n ... <|im_end|>\n, each image as
# <|vision_start|><|image_pad|><|vision_end|>, no default system prompt, and
# "<|im_start|>assistant\n" as the generation prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or part['type'] == 'image_url' or 'image' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

_CORPUS = [
    "Is this bag real leather? The stitching and the grain look like genuine leather.",
    "What brand is it, and is it a good gift for my mother?",
    "Describe the product in the photo: colour, material, size and condition.",
    "These running shoes have a mesh upper, a foam sole and reflective laces.",
    "The watch has a stainless steel case, a sapphire crystal and a leather strap.",
    "Does this jacket come in other colours? How does the fabric feel?",
    "这个包是真皮的吗？这是什么品牌？适合送给妈妈吗？",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}",
    "price shipping return warranty cotton wool silk denim canvas suede plastic",
]


def _train_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tokenizer


def _model_config(token_ids: dict[str, int], vocab_size: int) -> Any:
    from transformers import Qwen3VLConfig

    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        # vLLM's CPU attention rejects head_dim 16; 64 works.
        "head_dim": 64,
        "max_position_embeddings": 32768,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": [12, 10, 10],  # sums to head_dim / 2
            "mrope_interleaved": True,
        },
        "tie_word_embeddings": False,
        "bos_token_id": None,
        "eos_token_id": token_ids["<|im_end|>"],
        "pad_token_id": token_ids["<|endoftext|>"],
    }
    vision_config = {
        "depth": 2,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_heads": 2,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 128,  # the text model's hidden size
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [1],
    }
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def build(output_dir: Path) -> Path:
    """Write the checkpoint into output_dir (created) and return it."""
    import torch
    from transformers import (
        GenerationConfig,
        PreTrainedTokenizerFast,
        Qwen2VLImageProcessor,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    torch.manual_seed(SEED)
    raw_tokenizer = _train_tokenizer()
    token_ids = {token: raw_tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    vocab_size = -(-raw_tokenizer.get_vocab_size() // 64) * 64

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw_tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        chat_template=CHAT_TEMPLATE,
    )
    # Qwen3-VL's real preprocessing: 16-pixel patches merged 2x2, so each
    # 32x32 block of the resized image is one token.
    image_processor = Qwen2VLImageProcessor(
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        # At most 2,048 image tokens (1920x1080 is 2,040): the real model allows
        # 16,384, whose encoder profiling run would take minutes on a CPU.
        size={"shortest_edge": 64 * 32 * 32, "longest_edge": 2048 * 32 * 32},
    )
    video_processor = Qwen3VLVideoProcessor(patch_size=16, temporal_patch_size=2, merge_size=2)
    processor = Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )

    config = _model_config(token_ids, vocab_size)
    model = Qwen3VLForConditionalGeneration(config).to(torch.bfloat16).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[token_ids["<|im_end|>"], token_ids["<|endoftext|>"]],
        pad_token_id=token_ids["<|endoftext|>"],
        do_sample=False,
    )

    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    (output_dir / "BUILD.json").write_text(
        json.dumps(
            {
                "builder_version": BUILDER_VERSION,
                "seed": SEED,
                "note": "random weights: answers are noise",
            }
        )
    )
    return output_dir


def is_built(output_dir: Path) -> bool:
    marker = output_dir / "BUILD.json"
    if not marker.exists():
        return False
    return bool(json.loads(marker.read_text()).get("builder_version") == BUILDER_VERSION)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--force", action="store_true", help="rebuild even if present")
    args = parser.parse_args(argv)
    if is_built(args.output_dir) and not args.force:
        print(f"tiny model already built in {args.output_dir}")
        return 0
    build(args.output_dir)
    print(f"tiny Qwen3-VL written to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
