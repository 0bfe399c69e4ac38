"""Request and response bodies of the HTTP API (pydantic models; FastAPI turns them into /docs).

Ids are the data set's own ids. JSON strings are the canonical form; integers are accepted and
read as their decimal text ("42"), so `{"user": 42}` and `{"user": "42"}` mean the same user.
Unknown fields are refused, so a misspelt key is an error that names it, not a silent default.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

MAX_K = 100  # the most items (or categories) one answer lists
MAX_ITEMS = 200  # the most items one rate / prefer request scores
MAX_HISTORY = 200  # the most items a new user may name

Id = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Named = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class RecommendRequest(Body):
    user: Id = Field(description="a user id the run knows", examples=["42"])
    k: int = Field(10, ge=1, le=MAX_K, description="how many items")


class HistoryRecommendRequest(Body):
    history: list[Named] = Field(
        min_length=1,
        max_length=MAX_HISTORY,
        examples=[["Toy Story (1995)", "50"]],
        description="items a new user liked, newest first: item ids or titles",
    )
    k: int = Field(10, ge=1, le=MAX_K, description="how many items")


class UserOrHistory(Body):
    """Exactly one of `user` (a known user) and `history` (a new user, as in /recommend_for_history)."""

    user: Id | None = Field(None, description="a user id the run knows", examples=["42"])
    history: list[Named] | None = Field(
        None,
        min_length=1,
        max_length=MAX_HISTORY,
        description="or: items a new user liked (ids or titles), newest first",
    )

    @model_validator(mode="after")
    def _one_of(self):
        if (self.user is None) == (self.history is None):
            raise ValueError("give exactly one of 'user' and 'history'")
        return self


class PairsRequest(UserOrHistory):
    items: list[Id] = Field(
        min_length=1, max_length=MAX_ITEMS, examples=[["50", "181"]], description="item ids to score"
    )


class CategoriesRequest(UserOrHistory):
    k: int | None = Field(None, ge=1, le=MAX_K, description="how many categories (default: all)")


class ExplainRequest(UserOrHistory):
    item: Id = Field(description="the item whose score is explained", examples=["50"])
    k: int = Field(3, ge=1, le=MAX_K, description="how many shown items to list")


class FriendsRequest(UserOrHistory):
    k: int = Field(10, ge=1, le=MAX_K, description="how many people")
    exclude_friends: bool = Field(True, description="leave out the user's current friends")


class ReloadRequest(Body):
    run: Annotated[str, StringConstraints(min_length=1, max_length=4096)] = Field(
        description="the run folder to serve from now on (a path on the server)"
    )


class ScoredItem(BaseModel):
    item: str
    title: str
    score: float


class RecommendResponse(BaseModel):
    user: str | None = Field(description="the user id; null for a new user")
    items: list[ScoredItem] = Field(description="best first; seen (or named) items excluded")


class ScoredUser(BaseModel):
    user: str
    score: float


class FriendsResponse(BaseModel):
    user: str | None = Field(description="the user id; null for a new user")
    friends: list[ScoredUser] = Field(description="best first; the user (and their friends) excluded")


class Rating(BaseModel):
    item: str
    title: str
    rating: float


class RateResponse(BaseModel):
    user: str | None
    ratings: list[Rating]


class Preference(BaseModel):
    item: str
    title: str
    p_like: float


class PreferResponse(BaseModel):
    user: str | None
    preferences: list[Preference]


class CategoryAffinity(BaseModel):
    category: str
    p: float


class CategoriesResponse(BaseModel):
    user: str | None
    categories: list[CategoryAffinity]


class ContributionOut(BaseModel):
    item: str
    title: str
    source: str = Field(description="'history' (the user's own) or 'friend' (a friend's item)")
    friend: str | None = Field(description="the friend's user id (source 'friend')")
    change: float = Field(description="score with this entry in the prompt minus score without it")
    share: float = Field(description="change / the sum of positive changes; 0 when not positive")
    position: int = Field(description="the entry's place in its list in the prompt, 0 = newest")


class ExplainResponse(BaseModel):
    user: str | None = Field(description="the user id; null for a new user")
    item: str
    title: str
    score: float = Field(description="the recommendation score, as /recommend gives it")
    prior_part: float = Field(description="collaborative bias and factors: no prompt edit moves it")
    lm_part: float = Field(description="score - prior_part: what the language model read from the prompt")
    shown: int = Field(description="entries the prompt shows (history + friends' items), each left out once")
    history_shown: int
    social_shown: int
    positive_total: float = Field(description="the sum of the positive changes")
    contributions: list[ContributionOut] = Field(description="the k entries whose removal lowers the score most")
    sentence: str
    because: str


class ItemResponse(BaseModel):
    item: str
    title: str
    text: str
    categories: list[str]
    interactions: int = Field(description="how many interactions the run knows for it")


class HistoryEntryOut(BaseModel):
    item: str
    title: str
    value: float = Field(description="the rating (explicit data) or interaction weight")
    timestamp: int | None


class HistoryResponse(BaseModel):
    user: str
    items: list[HistoryEntryOut] = Field(description="newest first")


class UsersResponse(BaseModel):
    total: int
    users: list[str]


class ErrorResponse(BaseModel):
    error: str = Field(description="what was wrong")
    field: str | None = Field(None, description="the request field at fault, dotted (items.2), when one is")


class HealthResponse(BaseModel):
    status: str
    run: str
    dataset: str
    users: int
    items: int
    explicit: bool
    loaded_at: float
    reloads: int
    pending: int
    answered: int
    client_errors: int = Field(description="4xx answers")
    server_errors: int = Field(description="5xx answers other than 503")
    overloaded: int = Field(description="503 answers: queue full or timed out")
    batching: dict
