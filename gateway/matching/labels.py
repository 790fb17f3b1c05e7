"""Which token ids stand for "yes" and "no": asked of the worker's own tokenizer (vLLM's
/tokenize) once per model and checkpoint, then remembered.

Each spelling (instruction.py) counts by the first token of its tokenization: the first
token the answer would be. A first token that is only whitespace (a tokenizer that splits
off the leading space) stands for every word and is left out, and so is one that both a
yes and a no spelling begin with.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence

import orjson

from gateway.errors import ErrorCode, GatewayError
from gateway.matching.instruction import NO_SPELLINGS, YES_SPELLINGS, Labels

TOKENIZE_PATH = "/tokenize"
# (body, pool) -> the worker's /tokenize answer, through the gateway's upstream.
AskWorker = Callable[[bytes, str | None], Awaitable[bytes]]


def labels_from(
    yes: Sequence[Sequence[int]], no: Sequence[Sequence[int]], space: Sequence[int]
) -> Labels:
    """The label ids from each spelling's tokens and the tokens of a lone space."""
    blank = set(space)

    def firsts(tokenizations: Iterable[Sequence[int]]) -> list[int]:
        found: list[int] = []
        for tokens in tokenizations:
            if tokens and tokens[0] not in blank and tokens[0] not in found:
                found.append(tokens[0])
        return found

    yes_ids, no_ids = firsts(yes), firsts(no)
    both = set(yes_ids) & set(no_ids)
    labels = Labels(
        tuple(t for t in yes_ids if t not in both), tuple(t for t in no_ids if t not in both)
    )
    if not labels.yes or not labels.no:
        raise GatewayError(
            ErrorCode.UPSTREAM_ERROR, "The model's tokenizer has no tokens for yes and no."
        )
    return labels


class LabelFinder:
    """The labels of each (model, checkpoint), found once; concurrent first requests share
    one lookup."""

    def __init__(self, ask: AskWorker) -> None:
        self._ask = ask
        self._found: dict[tuple[str, str], asyncio.Future[Labels]] = {}

    async def labels(self, model: str, checkpoint: str, pool: str | None) -> Labels:
        key = (model, checkpoint)
        found = self._found.get(key)
        if found is None or (found.done() and (found.cancelled() or found.exception())):
            found = asyncio.ensure_future(self._lookup(model, pool))
            self._found[key] = found
        return await asyncio.shield(found)

    async def _lookup(self, model: str, pool: str | None) -> Labels:
        async def tokens(text: str) -> list[int]:
            body = orjson.dumps({"model": model, "prompt": text, "add_special_tokens": False})
            answer = await self._ask(body, pool)
            try:
                return [int(t) for t in orjson.loads(answer)["tokens"]]
            except (ValueError, KeyError, TypeError):
                raise GatewayError(
                    ErrorCode.UPSTREAM_ERROR, "The worker's tokenizer answer was malformed."
                ) from None

        yes = await asyncio.gather(*(tokens(word) for word in YES_SPELLINGS))
        no = await asyncio.gather(*(tokens(word) for word in NO_SPELLINGS))
        return labels_from(yes, no, await tokens(" "))
