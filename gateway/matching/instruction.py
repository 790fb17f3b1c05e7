"""The fixed instruction, and the score read from the model's next-token probabilities.

For each candidate text the worker gets the photo and this instruction, and generates one
token greedily with the log-probabilities of the answer's first token for the "yes" and
"no" tokens (vLLM's ``logprob_token_ids``: raw log-probabilities over the whole
vocabulary, before any sampling setting). Then::

    p_yes = sum of P(t) over the first tokens of "yes", "Yes", "YES", " yes", " Yes", " YES"
    p_no  = the same for "no"
    score = p_yes / (p_yes + p_no)

The score is the model's belief that the answer is yes, given that it answers yes or no:
0.5 is undecided. p_yes + p_no says how much of the model's answer is a yes or a no at all
(near 1 for an instruction-tuned model; a text it cannot judge lowers it). For Qwen's
tokenizer each of those spellings is one token; for a tokenizer that splits them, their
first tokens stand for them (labels.py). The instruction is versioned: a change of its
text is a new INSTRUCTION_VERSION, which is part of every score's cache key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import orjson

from gateway.errors import ErrorCode, GatewayError

INSTRUCTION_VERSION: Final = "match-v1"
INSTRUCTION: Final = 'Does this text describe the photo? Answer "yes" or "no".\nText: {text}'
YES_SPELLINGS: Final = ("yes", "Yes", "YES", " yes", " Yes", " YES")
NO_SPELLINGS: Final = ("no", "No", "NO", " no", " No", " NO")
_TOKEN_ID_PREFIX: Final = "token_id:"


def prompt_for(text: str) -> str:
    return INSTRUCTION.format(text=text)


@dataclass(frozen=True, slots=True)
class Labels:
    """The token ids whose probabilities make p_yes and p_no."""

    yes: tuple[int, ...]
    no: tuple[int, ...]

    @property
    def ids(self) -> list[int]:
        return [*self.yes, *self.no]


@dataclass(frozen=True, slots=True)
class Probabilities:
    p_yes: float
    p_no: float
    prompt_tokens: int

    @property
    def score(self) -> float | None:
        """P(yes | yes or no); None when the model gives both no probability at all."""
        total = self.p_yes + self.p_no
        return self.p_yes / total if total > 0 else None


def logprob_fields(labels: Labels) -> bytes:
    """What the worker body adds to a greedy one-token request (spliced in front)."""
    return b'"logprobs":true,"return_tokens_as_token_ids":true,"logprob_token_ids":%s,' % (
        orjson.dumps(labels.ids)
    )


def _malformed() -> GatewayError:
    return GatewayError(ErrorCode.UPSTREAM_ERROR, "The worker's log-probabilities were malformed.")


def read_probabilities(body: bytes, labels: Labels) -> Probabilities:
    """p_yes and p_no from the worker's answer (502 when they are not in it)."""
    try:
        completion = orjson.loads(body)
        entries = completion["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        logprobs: dict[int, float] = {}
        for entry in entries:
            token = str(entry["token"])
            if token.startswith(_TOKEN_ID_PREFIX):
                logprobs[int(token.removeprefix(_TOKEN_ID_PREFIX))] = float(entry["logprob"])
        prompt_tokens = int(completion["usage"]["prompt_tokens"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise _malformed() from None
    if any(token not in logprobs for token in labels.ids):
        raise _malformed()
    p_yes = sum(math.exp(logprobs[token]) for token in labels.yes)
    p_no = sum(math.exp(logprobs[token]) for token in labels.no)
    return Probabilities(p_yes, p_no, prompt_tokens)
