"""The HTTP API over a run folder: FastAPI routes, dynamic batching, errors, hot reload, the page.

Model work (/recommend, /rate, /prefer, /categories, /recommend_for_history, /explain) goes through a
`DynamicBatcher`: concurrent requests of one kind become one `Recommender` call on the single
model thread. Ids, titles and the run's abilities are checked inside that call, against the model
that answers it, so a reload between a request's arrival and its batch can never mix two runs.
Look-ups that need no model (/items, /users, /health) are answered on the event loop.

Every answer that is not 2xx is JSON `{"error": ..., "field": ...}`: 4xx for anything a client
sent (the field named where there is one), 503 for a full queue or a timeout (counted apart),
and 500 only for a bug.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mtrec.chat import ChatError, TitleIndex
from mtrec.inference import NewUser, Recommender, UnknownIdError
from mtrec.serve import schemas as s
from mtrec.serve.batching import DynamicBatcher, Overloaded

log = logging.getLogger("mtrec.serve")


@dataclasses.dataclass(frozen=True)
class Settings:
    """How the server batches and what it accepts (the command line's options)."""

    max_wait_ms: float = 5.0  # how long a lone request waits for others of its kind
    max_batch: int = 32  # the most requests per model call (1: batching off)
    # prompts per forward pass inside one call (a rate/prefer request carries several); None: 8 on
    # a CPU, where larger passes got slower per prompt (SmolLM2-135M, 2 cores: 3.7 users/s at 8,
    # 3.3 at 32, 1.9 at 1), 32 elsewhere
    forward_batch: int | None = None
    max_queue: int = 256  # requests waiting or running; more get 503
    timeout_s: float = 30.0  # a request not answered by then gets 503
    max_body: int = 64 * 1024  # bytes; a larger body gets 413
    admin_token: str | None = None  # /admin/reload is off without one
    device: str | None = None  # as Recommender.from_run
    precision: str | None = None  # fp32, bf16 or int8 (CPU), as Recommender.from_run


class ApiError(Exception):
    """A request the server will not answer: HTTP status, message, and the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


@dataclasses.dataclass(frozen=True)
class Served:
    """One loaded run folder: swapped whole on reload, never changed in place."""

    rec: Recommender
    run: Path
    titles: TitleIndex
    interactions: np.ndarray  # per item, for /items
    loaded_at: float

    @classmethod
    def load(cls, run: str | Path, device: str | None = None, precision: str | None = None) -> Served:
        rec = Recommender.from_run(run, device=device, precision=precision)
        counts = np.bincount(rec.dataset.item_idx, minlength=rec.dataset.num_items)
        return cls(rec, Path(run), TitleIndex(rec.dataset.items, counts), counts, time.time())


@dataclasses.dataclass
class Counters:
    answered: int = 0
    client_errors: int = 0
    server_errors: int = 0
    overloaded: int = 0
    reloads: int = 0


class Service:
    """The served model, its batcher and its counters; the handlers run on the model thread."""

    def __init__(self, served: Served, settings: Settings, loader: Callable[[Path], Served]) -> None:
        if settings.forward_batch is None:
            settings = dataclasses.replace(
                settings, forward_batch=8 if served.rec.device.type == "cpu" else 32
            )
        self.served, self.settings, self.loader = served, settings, loader
        self.counters = Counters()
        self.reload_lock = asyncio.Lock()
        self.batcher = DynamicBatcher(
            {
                "recommend": self._recommend,
                "rate": self._rate,
                "prefer": self._prefer,
                "categories": self._categories,
                "explain": self._explain,
                "friends": self._friends,
            },
            max_wait_s=settings.max_wait_ms / 1000,
            max_batch=settings.max_batch,
            max_queue=settings.max_queue,
            timeout_s=settings.timeout_s,
        )

    # ---- batch handlers (model thread) --------------------------------------------------------
    def _recommend(self, reqs: Sequence) -> list:
        served = self.served  # one model answers the whole batch
        results, whos, rows = _checked(reqs, lambda r: _who(served, r))
        if whos:
            k = max(reqs[n].k for n in rows)
            tops = served.rec.recommend(whos, k=k, batch_size=self.settings.forward_batch)
            for n, who, top in zip(rows, whos, tops):
                items = [s.ScoredItem(item=i, title=_title(served, i), score=v) for i, v in top[: reqs[n].k]]
                results[n] = s.RecommendResponse(user=_user_of(who), items=items)
        return results

    def _rate(self, reqs: Sequence) -> list:
        served = self.served
        if not served.rec.dataset.explicit:
            error = ApiError(
                400,
                f"data set {served.rec.dataset.name!r} has implicit feedback only: this run "
                "has no rating head; ask /prefer for P(like)",
            )
            return [error] * len(reqs)
        score = partial(served.rec.rate, batch_size=self.settings.forward_batch)
        return self._pairs(
            served,
            reqs,
            score,
            lambda i, t, v: s.Rating(item=i, title=t, rating=v),
            lambda who, out: s.RateResponse(user=_user_of(who), ratings=out),
        )

    def _prefer(self, reqs: Sequence) -> list:
        served = self.served
        score = partial(served.rec.prefer, batch_size=self.settings.forward_batch)
        return self._pairs(
            served,
            reqs,
            score,
            lambda i, t, v: s.Preference(item=i, title=t, p_like=v),
            lambda who, out: s.PreferResponse(user=_user_of(who), preferences=out),
        )

    @staticmethod
    def _pairs(served: Served, reqs: Sequence, score, entry, answer) -> list:
        """Every (user, item) pair of every request in one call, split back per request."""
        results, checked, rows = _checked(reqs, lambda r: (_who(served, r), _items(served, r.items)))
        if checked:
            users = [who for who, items in checked for _ in items]
            values = iter(score(users, [i for _, items in checked for i in items]))
            for n, (who, items) in zip(rows, checked):
                results[n] = answer(who, [entry(i, _title(served, i), next(values)) for i in items])
        return results

    def _categories(self, reqs: Sequence) -> list:
        served = self.served
        results, whos, rows = _checked(reqs, lambda r: _who(served, r))
        if whos:
            limit = max((reqs[n].k or len(served.rec.dataset.categories)) for n in rows)
            answers = served.rec.categories(whos, k=limit, batch_size=self.settings.forward_batch)
            for n, who, cats in zip(rows, whos, answers):
                out = [s.CategoryAffinity(category=c, p=p) for c, p in cats[: reqs[n].k or len(cats)]]
                results[n] = s.CategoriesResponse(user=_user_of(who), categories=out)
        return results

    def _explain(self, reqs: Sequence) -> list:
        """Every request's explanation in one call: the occluded prompts of all of them (shared by
        requests of one user) go through the model together, `forward_batch` at a time."""
        served = self.served
        results, checked, rows = _checked(reqs, lambda r: (_who(served, r), _items(served, [r.item], "item")[0]))
        if checked:
            whos, items = [w for w, _ in checked], [i for _, i in checked]
            ks = [reqs[n].k for n in rows]
            answers = served.rec.explain_pairs(whos, items, k=ks, batch_size=self.settings.forward_batch)
            for n, who, e in zip(rows, whos, answers):
                results[n] = s.ExplainResponse(**{**e.to_dict(), "user": _user_of(who)})
        return results

    def _friends(self, reqs: Sequence) -> list:
        served = self.served
        if "friends" not in served.rec.prompts:
            error = ApiError(400, f"{served.rec.run_dir} was not trained with the friends task (train.tasks)")
            return [error] * len(reqs)
        results, whos, rows = _checked(reqs, lambda r: _who(served, r))
        for exclude in (True, False):  # one model call per setting present in the batch
            mine = [(n, w) for n, w in zip(rows, whos) if reqs[n].exclude_friends == exclude]
            if not mine:
                continue
            k = max(reqs[n].k for n, _ in mine)
            tops = served.rec.recommend_friends([w for _, w in mine], k=k, exclude_friends=exclude,
                                                batch_size=self.settings.forward_batch)
            for (n, who), top in zip(mine, tops):
                people = [s.ScoredUser(user=v, score=x) for v, x in top[: reqs[n].k]]
                results[n] = s.FriendsResponse(user=_user_of(who), friends=people)
        return results

    # ---- reload ---------------------------------------------------------------------------------
    async def reload(self, run: str) -> Served:
        """Load `run` beside the served model (requests keep being answered), then swap it in on
        the model thread, between two batches. A run that does not load leaves the old one serving."""
        if self.reload_lock.locked():
            raise ApiError(409, "a reload is already under way")
        async with self.reload_lock:
            try:
                new = await asyncio.to_thread(self.loader, Path(run))
            except Exception as e:  # noqa: BLE001 - whatever stops the folder loading is about the folder
                raise ApiError(
                    422, f"cannot load run folder {run!r}: {type(e).__name__}: {e}", "run"
                ) from None

            def swap() -> None:
                self.served = new

            await self.batcher.run_on_model_thread(swap)
            self.counters.reloads += 1
            return new


# ---- checks shared by the handlers ----------------------------------------------------------------
def _checked(reqs: Sequence, check) -> tuple[list, list, list[int]]:
    """(results with an ApiError where `check` refused a request, the checked values, their rows)."""
    results: list = [None] * len(reqs)
    good, rows = [], []
    for n, req in enumerate(reqs):
        try:
            good.append(check(req))
            rows.append(n)
        except ApiError as e:
            results[n] = e
    return results, good, rows


def _who(served: Served, req) -> str | NewUser:
    """The request's known user id, or a `NewUser` from its history (ids or titles)."""
    if getattr(req, "user", None) is not None:
        if req.user not in served.rec.dataset.user_index:
            raise ApiError(
                404,
                f"unknown user id {req.user!r} (this run knows {served.rec.dataset.num_users} users)",
                "user",
            )
        return req.user
    ids = []
    for n, named in enumerate(req.history):
        try:
            ids.append(served.rec.dataset.items[served.titles.resolve(named)].id)
        except ChatError as e:
            raise ApiError(404, str(e), f"history.{n}") from None
    return NewUser(ids)


def _items(served: Served, items: Sequence[str], field: str | None = None) -> list[str]:
    """The ids, all known (404 naming ``items.N``, or `field` for a request's single item)."""
    index = served.rec.dataset.item_index
    for n, item in enumerate(items):
        if item not in index:
            raise ApiError(404, f"unknown item id {item!r} (this run knows {len(index)} items)", field or f"items.{n}")
    return list(items)


def _title(served: Served, item: str) -> str:
    ds = served.rec.dataset
    return ds.items[ds.item_index[item]].title


def _user_of(who) -> str | None:
    return None if isinstance(who, NewUser) else who


# ---- the app --------------------------------------------------------------------------------------
def create_app(
    run: str | Path, settings: Settings = Settings(), loader: Callable[[Path], Served] | None = None
) -> FastAPI:
    """The FastAPI app serving `run`. The model loads now, so a bad run folder fails before any
    socket is opened. `loader` (default `Served.load` on `settings.device`) is used for reloads too."""
    loader = loader or (lambda path: Served.load(path, settings.device, settings.precision))
    service = Service(loader(Path(run)), settings, loader)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()
        yield
        await service.batcher.stop()

    app = FastAPI(
        title="mtrec",
        version=_version(),
        lifespan=lifespan,
        # An id may hold a "/" (a local data set's ids are any text): no redirect to a trimmed path.
        redirect_slashes=False,
        description="One fine-tuned language model for rating, preference and recommendation. "
        'Ids are the data set\'s own; errors are `{"error", "field"}`.',
        responses={
            404: {"model": s.ErrorResponse},
            422: {"model": s.ErrorResponse},
            503: {"model": s.ErrorResponse},
        },
    )
    app.state.service = service
    _error_handlers(app, service)
    app.add_middleware(BodyLimit, max_body=settings.max_body)
    app.add_middleware(CountAnswers, counters=service.counters)
    _model_routes(app, service)
    _lookup_routes(app, service)
    return app


def _model_routes(app: FastAPI, service: Service) -> None:
    submit = service.batcher.submit

    @app.post("/recommend", response_model=s.RecommendResponse, tags=["model"])
    async def recommend(body: s.RecommendRequest):
        """Top-k unseen items for a known user (one forward pass and one matrix product per batch)."""
        return await submit("recommend", body)

    @app.post("/recommend_for_history", response_model=s.RecommendResponse, tags=["model"])
    async def recommend_for_history(body: s.HistoryRecommendRequest):
        """Top-k for a new user who liked the named items (cold start); the named items are excluded."""
        return await submit("recommend", body)

    @app.post("/rate", response_model=s.RateResponse, tags=["model"])
    async def rate(body: s.PairsRequest):
        """Predicted ratings of `items` for a user (or a new user's `history`); explicit data only."""
        return await submit("rate", body)

    @app.post("/prefer", response_model=s.PreferResponse, tags=["model"])
    async def prefer(body: s.PairsRequest):
        """P(like) of each of `items` for a user (or a new user's `history`)."""
        return await submit("prefer", body)

    @app.post("/categories", response_model=s.CategoriesResponse, tags=["model"])
    async def categories(body: s.CategoriesRequest):
        """The user's categories by affinity, best first."""
        return await submit("categories", body)

    @app.post("/explain", response_model=s.ExplainResponse, tags=["model"])
    async def explain(body: s.ExplainRequest):
        """Why `item` scores as it does for a user (or a new user's `history`): the score split into
        the priors' and the language model's parts, and the `k` items shown in the prompt whose
        removal lowers it most (occlusion: 1 + shown entries prompts per user)."""
        return await submit("explain", body)

    @app.post("/friends", response_model=s.FriendsResponse, tags=["model"])
    async def friends(body: s.FriendsRequest):
        """People a user (or a new user's `history`) may want to befriend, by the friends head, over
        every user the run knows; the user and (by default) their current friends are left out. Needs
        a run trained with the friends task."""
        return await submit("friends", body)

    def admin(x_admin_token: str | None = Header(None)) -> None:
        """Checked before the body is read: without the token nothing about the request is answered."""
        token = service.settings.admin_token
        if not token:
            raise ApiError(404, "admin endpoints are off: start the server with --admin-token")
        if x_admin_token is None or not hmac.compare_digest(x_admin_token.encode(), token.encode()):
            raise ApiError(401, "missing or wrong admin token", "X-Admin-Token")

    @app.post("/admin/reload", tags=["admin"], dependencies=[Depends(admin)])
    async def reload(body: s.ReloadRequest):
        """Serve another run folder from now on (needs `--admin-token` and the X-Admin-Token header)."""
        new = await service.reload(body.run)
        return {"run": str(new.run), "users": new.rec.dataset.num_users, "items": new.rec.dataset.num_items}


def _lookup_routes(app: FastAPI, service: Service) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return resources.files("mtrec.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/health", response_model=s.HealthResponse, tags=["lookup"])
    async def health():
        served, c = service.served, service.counters
        ds = served.rec.dataset
        return s.HealthResponse(
            status="ok",
            run=str(served.run),
            dataset=ds.name,
            users=ds.num_users,
            items=ds.num_items,
            explicit=ds.explicit,
            loaded_at=served.loaded_at,
            reloads=c.reloads,
            pending=service.batcher.pending,
            answered=c.answered,
            client_errors=c.client_errors,
            server_errors=c.server_errors,
            overloaded=c.overloaded,
            batching=service.batcher.stats.as_dict(),
        )

    @app.get("/items/{item_id:path}", response_model=s.ItemResponse, tags=["lookup"])
    async def item(item_id: str):
        served = service.served
        ds = served.rec.dataset
        j = ds.item_index.get(item_id)
        if j is None:
            raise ApiError(
                404, f"unknown item id {item_id!r} (this run knows {ds.num_items} items)", "item_id"
            )
        it = ds.items[j]
        return s.ItemResponse(
            item=it.id,
            title=it.title,
            text=it.text,
            categories=list(it.categories),
            interactions=int(served.interactions[j]),
        )

    @app.get("/users/{user_id}/history", response_model=s.HistoryResponse, tags=["lookup"])
    async def history(user_id: str, limit: int = Query(50, ge=1, le=10_000)):
        served = service.served
        try:
            known = served.rec.history(user_id)[:limit]
        except UnknownIdError as e:
            raise ApiError(404, str(e), "user_id") from None
        entries = [
            s.HistoryEntryOut(item=i, title=_title(served, i), value=v, timestamp=t) for i, v, t in known
        ]
        return s.HistoryResponse(user=user_id, items=entries)

    @app.get("/users", response_model=s.UsersResponse, tags=["lookup"])
    async def users(offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=10_000)):
        """User ids of the run, in the catalog's order (for pickers)."""
        ds = service.served.rec.dataset
        return s.UsersResponse(total=ds.num_users, users=[u.id for u in ds.users[offset : offset + limit]])


# ---- errors -----------------------------------------------------------------------------------------
def _error(status: int, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


def _error_handlers(app: FastAPI, service: Service) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return _error(e.status, e.message, e.field)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, e: Overloaded):
        return _error(503, str(e), headers={"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0]
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            error = first.get("ctx", {}).get("error", "")
            return _error(422, f"malformed JSON body{': ' + str(error) if error else ''}", "body")
        field = ".".join(where[1:] if where and where[0] in ("query", "path", "header") else where) or "body"
        kind = request.headers.get("content-type", "")
        if field == "body" and request.method == "POST" and "json" not in kind:
            return _error(
                422,
                f"the body must be a JSON object sent as Content-Type: application/json "
                f"(got {kind or 'no content type'!r})",
                "body",
            )
        return _error(422, f"{field}: {first.get('msg', 'invalid value')}", field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        field = "body" if e.status_code == 400 and "parsing the body" in str(e.detail) else None
        message = "the body is not readable JSON (it must be UTF-8)" if field else str(e.detail)
        return _error(e.status_code, message, field, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception):
        log.exception("internal error answering %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(e).__name__}); see the server log")


class CountAnswers:
    """ASGI middleware: counts answers by class for /health (503s apart from other 5xx)."""

    def __init__(self, app, counters: Counters) -> None:
        self.app, self.counters = app, counters

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status, c = message["status"], self.counters
                c.answered += 1
                if status == 503:
                    c.overloaded += 1
                elif status >= 500:
                    c.server_errors += 1
                elif status >= 400:
                    c.client_errors += 1
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:  # answered with a 500 by the outermost middleware, outside this one
            self.counters.answered += 1
            self.counters.server_errors += 1
            raise


class BodyLimit:
    """ASGI middleware: a request body over `max_body` bytes gets 413 before any route reads it
    (by its Content-Length, or while it streams in without one)."""

    def __init__(self, app, max_body: int) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await self._refuse(scope, receive, send)
        chunks, size = [], 0
        while True:  # read the (bounded) body now and hand it on whole
            message = await receive()
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_body:
                return await self._refuse(scope, receive, send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        response = _error(413, f"request body over the limit of {self.max_body} bytes", "body")
        await response(scope, receive, send)


def _version() -> str:
    import mtrec

    return mtrec.__version__
