"""The serving API's request and response shapes, for validation (rerank) and the OpenAPI schema.

The handlers build their JSON straight from Redis values (orjson, no model instances on the hot path); these models
describe it in ``/openapi.json``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fusionrec.contracts.events import MAX_ID_LENGTH

__all__ = [
    "EventsAccepted",
    "EventsRejected",
    "Item",
    "Recommendations",
    "RerankRequest",
    "Reranked",
    "Similar",
    "Weights",
]

Id = Field(min_length=1, max_length=MAX_ID_LENGTH)


class Item(BaseModel):
    item_id: str
    score: float = Field(description="The fused score (fallback: the global source's score).")
    category_id: str | None = None
    sources: list[str] = Field(description="The sources that put the item on the list, largest share first.")
    contributions: dict[str, float] = Field(description="Each source's share of `score`.")


class Recommendations(BaseModel):
    user_id: str
    fallback: bool = Field(description="True: the user has no list yet; `items` is the global fallback.")
    fallback_source: str | None = Field(None, description="Where the fallback came from (`trending`, `popular`).")
    items: list[Item]
    generated_at: int | None = Field(description="When the list was made (epoch ms).")
    newest_event_ts: int | None = Field(description="Time of the user's newest event the list reflects (epoch ms).")
    freshness_ms: int | None = Field(description="Now minus `newest_event_ts`: how far behind the user the list is.")
    segment: str | None = None
    ranker: str | None = Field(None, description="What ordered the list: `learned` or `bandit`.")
    policy: dict | None = Field(None, description="How the fusion weights were chosen (arm, action, propensity).")
    model_version: str | None = None


class EventsAccepted(BaseModel):
    accepted: int = Field(description="Events the brokers acknowledged.")
    topic: str
    offsets: list[tuple[int, int]] = Field(description="`[partition, offset]` of each event, in the order posted.")


class Rejection(BaseModel):
    index: int = Field(description="Position of the event in the posted batch (0 for a single event).")
    reasons: list[dict[str, str]] = Field(description="Every reason, as the contract gives it: code, field, message.")


class EventsRejected(BaseModel):
    detail: str
    invalid: list[Rejection]


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Id
    items: list[str] = Field(description="The shop's candidates (e.g. search results), in the shop's order.")


class RerankedItem(BaseModel):
    item_id: str
    score: float | None = Field(description="The fused score, for items on the user's list.")
    on_list: bool
    list_position: int | None = Field(description="1-based position on the user's fused list.")
    given_position: int = Field(description="0-based position in the request.")
    sources: list[str]
    reason: str


class Reranked(BaseModel):
    user_id: str
    personalised: bool = Field(description="False: the user has no list yet, so the order is the one given.")
    items: list[RerankedItem]
    generated_at: int | None = None


class Similar(BaseModel):
    item_id: str
    items: list[dict] = Field(description="`{item_id, score}`: the decayed co-visitation strength, best first.")
    source: str = Field(description="The snapshot the neighbours were read from.")
    as_of: int = Field(description="When that snapshot was loaded (epoch ms).")


class Weights(BaseModel):
    partitions: dict[str, dict] = Field(description="Each events partition's bandit weights, as the worker wrote them.")
    mean: dict[str, dict[str, float]] = Field(description="Per segment, each source's weight averaged over partitions.")
