"""POST /v1/match: its request and answer."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

CandidateText = Annotated[str, Field(min_length=1)]


class MatchRequest(BaseModel):
    """One photo, one or several candidate texts (GATEWAY_MATCH_MAX_TEXTS, each at most
    GATEWAY_MATCH_MAX_TEXT_CHARS characters)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    image: str = Field(
        min_length=1,
        description="Base64 image bytes, bare or as a data URI, or an http(s) URL as for "
        "image_url.",
    )
    texts: list[CandidateText] = Field(min_length=1)
    model: str | None = Field(default=None, description="Defaults to the gateway's model.")


class MatchScore(BaseModel):
    object: Literal["match.score"] = "match.score"
    index: int
    score: float | None = Field(
        description="P(yes) / (P(yes) + P(no)) for the answer's first token: the model's "
        "belief that the text describes the photo. None only when both are 0."
    )
    p_yes: float
    p_no: float
    cache: str = Field(description="hit, miss, coalesced or bypass, as X-Cache.")


class MatchUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class MatchResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    instruction: str = Field(description="The instruction's version (part of the cache key).")
    data: list[MatchScore]
    usage: MatchUsage
