"""``churnseg api``: one customer's classes and scores over HTTP, rescoring and feedback.

Routes (OpenAPI at ``/docs`` and ``/openapi.json``; docs/api.md):

- ``GET /health``: up, schema version, newest snapshot (no token needed).
- ``GET /customers/{id}``: the newest published row and the owner (scope ``read``).
- ``POST /customers/{id}/rescore``: re-score the customer now from the sources and publish the
  row as an intra-day update (scope ``rescore``).
- ``POST /feedback``: a person's correction of a class, or a contact outcome (scope ``feedback``).

Every ``POST`` is written to ``api_audit``, accepted or not. Errors are one JSON line with a
``detail``; the ``X-Request-ID`` header names the request in the server log and the audit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import pyarrow.parquet as pq
from fastapi import Depends, FastAPI, HTTPException, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from churnseg.features.cleaning import DataContractError
from churnseg.models.feedback import CONTACT, CORRECTION, check_correction
from churnseg.models.registry import champion_version
from churnseg.pipelines.api.auth import Principal, TokenRegistry
from churnseg.pipelines.api.batching import Coalescer
from churnseg.pipelines.api.store import Store, now_utc
from churnseg.pipelines.config import Config
from churnseg.pipelines.keyed_files import KeyedSources
from churnseg.pipelines.publish import PublishError, publish_intraday, target_from_config
from churnseg.pipelines.sources import SourceError
from churnseg.pipelines.stages.intraday import (
    IntradayUnavailableError,
    PublishedSnapshot,
    Rescorer,
    load_rescorer,
    published_snapshot,
    rescore_stage,
)
from churnseg.pipelines.stages.run_folder import CLEAN_ORDER, RunPaths
from churnseg.pipelines.warm_engine import WarmConnections

log = logging.getLogger("churnseg.api")
CustomerId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[^\s/]+$")]


class CustomerRow(BaseModel):
    """A customer's newest published classes and scores (docs/output_tables.md)."""

    customer_id: str
    snapshot_date: str
    segment_id: int
    segment_name: str
    value_tier: str | None
    lifecycle_stage: str | None
    churn_probability: float
    risk_band: str | None
    top_reasons: list[str]
    expected_value: float | None
    value_at_risk: float | None
    owner_id: str | None
    update_kind: str | None
    features_as_of: str | None
    scored_at: str
    segmentation_model_version: int
    churn_model_version: int
    run_id: str


class Correction(BaseModel):
    """A person's correction of one class of a customer; it overrides the model from then on."""

    kind: Literal["correction"]
    customer_id: str = Field(min_length=1, max_length=128)
    field: str = Field(description="value_tier, lifecycle_stage or segment_name")
    value: str = Field(min_length=1, max_length=128)
    reason: str = Field(min_length=3, max_length=1000, description="Why, in your words.")


class Contact(BaseModel):
    """A retention contact and its outcome."""

    kind: Literal["contact"]
    customer_id: str = Field(min_length=1, max_length=128)
    contacted_at: datetime
    channel: str | None = Field(None, max_length=64)
    outcome: str | None = Field(None, max_length=256)


class FeedbackReceipt(BaseModel):
    """What was stored."""

    feedback_id: str
    received_at: str
    kind: str


class Health(BaseModel):
    """Whether the service can read its database, and what it serves."""

    status: str
    schema_version: int
    snapshot: str | None


_bearer = HTTPBearer(auto_error=False, description="A token from api.tokens.")


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Return the holder of the request's bearer token (401 without a valid one)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    tokens: TokenRegistry = request.app.state.tokens
    found = tokens.principal(credentials.credentials)
    if found is None:
        raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})
    request.state.actor = found.name
    return found


Caller = Annotated[Principal, Depends(principal)]


@dataclass(frozen=True)
class RescoreBatch:
    """One rescore run: its id, the customers it scored, how many it was asked for, its time."""

    run_id: str
    scored: frozenset[str]
    size: int
    seconds: float = 0.0


class AuditLog:
    """Writes audit rows; those that arrive while a write runs share the next transaction.

    A rescore run answers its 32 requests at once: written one by one, their audit rows
    (one commit each) released the answers over about 0.25 s, and the next run started before
    the last clients asked again.
    """

    def __init__(self, store: Store) -> None:
        """Start the writer (one thread)."""
        self._store = store
        self._rows: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._writes: Coalescer[str, None] = Coalescer(self._write, 1, 1_000)

    def write(self, row: dict[str, Any]) -> Future[None]:
        """Return a future that is done when ``row`` (with a unique ``audit_id``) is stored."""
        with self._lock:
            self._rows[row["audit_id"]] = row
        return self._writes.submit(row["audit_id"])

    def close(self) -> None:
        """Write the rows still waiting, then stop the writer."""
        self._writes.close()

    def _write(self, audit_ids: list[str]) -> None:
        with self._lock:
            rows = [self._rows.pop(i) for i in audit_ids]
        self._store.audit(rows)


class AuditMiddleware:
    """Names every request (``X-Request-ID``) and writes every ``POST`` to ``api_audit``.

    A POST's response is held until its audit row is stored: when the audit cannot be
    written the client gets 503 instead, so no write goes unaudited without the client
    hearing of it. Pure ASGI (no per-request task or body copy for reads).
    """

    def __init__(self, app: ASGIApp, audit: AuditLog) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call (HTTP requests are named, POSTs audited)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        named = (b"x-request-id", request_id.encode())
        if scope["method"] != "POST":

            async def send_named(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), named]
                await send(message)

            await self.app(scope, receive, send_named)
            return
        started = now_utc()
        held: list[Message] = []

        async def hold(message: Message) -> None:
            held.append(message)

        try:
            await self.app(scope, receive, hold)
        except Exception:
            await self._audit(scope, request_id, started, 500)
            raise
        if not await self._audit(scope, request_id, started, int(held[0]["status"])):
            refused = JSONResponse(
                {"detail": "the audit log is unavailable; the request may have been applied"},
                status_code=503,
                headers={"X-Request-ID": request_id},
            )
            await refused(scope, receive, send)
            return
        held[0]["headers"] = [*held[0].get("headers", []), named]
        for message in held:
            await send(message)

    async def _audit(self, scope: Scope, request_id: str, at: datetime, status: int) -> bool:
        """Write the audit row of a request; return False when it could not be stored."""
        state = scope.get("state", {})
        row = {
            "audit_id": request_id,
            "at": at,
            "actor": state.get("actor"),
            "method": scope["method"],
            "path": str(scope["path"])[:500],
            "customer_id": state.get("customer_id")
            or scope.get("path_params", {}).get("customer_id"),
            "status": status,
            "detail": state.get("detail"),
        }
        try:
            await asyncio.wrap_future(self.audit.write(row))
        except PublishError:
            log.exception("request %s: the audit row could not be written", request_id)
            return False
        return True


class RescorerCache:
    """The loaded rescorer, replaced when a new snapshot or champion is published.

    The first ``get`` loads it. Then a background thread checks every ``reload_seconds``
    (a query and the MLflow registry) and loads the new one beside the old, so no rescore
    waits for the check (0.15 s, once a minute at 1M customers) or for a reload (seconds).
    When the champions changed since the newest snapshot, ``get`` raises
    ``IntradayUnavailableError`` until a full score publishes a snapshot of theirs.
    """

    def __init__(self, config: Config, reload_seconds: float) -> None:
        self._config = config
        self._target = target_from_config(config)
        self._reload = reload_seconds
        self._lock = threading.Lock()
        self._value: Rescorer | None = None
        self._error: IntradayUnavailableError | None = None
        self._settled = False
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def get(self) -> Rescorer:
        """Return the rescorer of the newest snapshot (the first call loads it)."""
        with self._lock:
            if self._value is None:
                self._value = load_rescorer(self._config, self._target)
                self._watcher = threading.Thread(
                    target=self._watch, name="rescorer-reload", daemon=True
                )
                self._watcher.start()
            if self._error is not None:
                raise self._error
            return self._value

    def stop(self) -> None:
        """Stop checking for new snapshots (the service stops)."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()

    def _watch(self) -> None:
        while not self._stop.wait(self._reload):
            current = self._value
            try:
                snapshot = published_snapshot(self._target)
                if current is not None and not self._stale(current, snapshot):
                    with self._lock:
                        self._error = None
                    continue
                fresh = load_rescorer(self._config, self._target, snapshot)
            except IntradayUnavailableError as exc:
                with self._lock:
                    self._error = exc
                continue
            except Exception as exc:  # keep serving the loaded one; say why in the log
                log.warning("checking for a new snapshot or champion: %s", exc)
                continue
            with self._lock:
                gc.unfreeze()  # the models replaced may be collected again
                self._value, self._error, self._settled = fresh, None, False

    def settle(self) -> None:
        """After the first run with a newly loaded rescorer, hide what it holds from the GC.

        The models, the modules and the warm connection's compiled queries stay alive for as
        long as the rescorer does; a full collection walking them took 0.27 s of one rescore
        in ten. ``gc.freeze`` moves every object alive now out of the collector's sight.
        """
        with self._lock:
            if not self._settled:
                gc.collect()
                gc.freeze()
                self._settled = True

    def release(self) -> None:
        """Let the collector see the settled objects again (the service stops).

        Frozen objects are not collected when Python exits, and DuckDB's bindings then
        report the ones they made as leaked.
        """
        with self._lock:
            gc.unfreeze()
            self._settled = False

    def _stale(self, current: Rescorer, snapshot: PublishedSnapshot) -> bool:
        mlflow = self._config.mlflow
        versions = (
            champion_version(mlflow.segmentation_model),
            champion_version(mlflow.churn_model),
        )
        loaded = (current.models.segmentation_version, current.models.churn_version)
        return snapshot.run_id != current.snapshot.run_id or versions != loaded


def _warm(keyed: KeyedSources) -> None:
    """Build the keyed copies of the file sources; a failure is retried by the first rescore."""
    started = time.perf_counter()
    try:
        keyed.refresh()
    except Exception as exc:  # the rescore that needs them reports it to its caller
        log.warning("keyed source copies: %s", exc)
    else:
        log.info("keyed source copies ready in %.1f s", time.perf_counter() - started)


def _row(found: dict[str, Any]) -> CustomerRow:
    reasons = found.get("top_reasons")
    return CustomerRow(
        **{
            **{k: v for k, v in found.items() if k in CustomerRow.model_fields},
            "snapshot_date": str(found["snapshot_date"])[:10],
            "top_reasons": [r for r in str(reasons).split("; ") if r] if reasons else [],
            "features_as_of": _text(found.get("features_as_of")),
            "scored_at": _text(found["scored_at"]),
        }
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, datetime) else str(value)


def create_app(config: Config) -> FastAPI:
    """Return the API over the config's output database, models and sources.

    Raises:
        ConfigError: No usable token (``api.tokens``).
        PublishError: The output database cannot be reached.
    """
    from churnseg.pipelines.stages import configure_mlflow

    tokens = TokenRegistry(config.api)
    configure_mlflow(config)
    store = Store(target_from_config(config))
    rescorers = RescorerCache(config, config.api.reload_seconds)
    keyed = KeyedSources(config, CLEAN_ORDER) if config.api.keyed_sources else None
    warm = WarmConnections(config.engine)
    if keyed is not None:  # the first rescore should not wait for the copies
        threading.Thread(target=_warm, args=(keyed,), name="keyed-sources", daemon=True).start()

    def rescore_batch(customer_ids: list[str]) -> RescoreBatch:
        """Re-score and publish some customers in one run; say which had rows."""
        run_id = f"api-{uuid.uuid4().hex}"
        paths = RunPaths(config.state_dir / "runs" / run_id)
        started = time.perf_counter()
        try:
            rescorer = rescorers.get()
            moment = now_utc().replace(tzinfo=None)
            try:
                scores = rescore_stage(
                    config,
                    store.target,
                    rescorer,
                    customer_ids,
                    moment,
                    paths,
                    run_id,
                    keyed,
                    warm.get(),
                )
            except BaseException:
                warm.discard()  # its views may point into this run's deleted folder
                raise
            scored: list[str] = []
            if scores is not None:
                scored = pq.read_table(scores, columns=["customer_id"]).column(0).to_pylist()
                publish_intraday(scores, store.target)
            rescorers.settle()
            seconds = time.perf_counter() - started
            return RescoreBatch(run_id, frozenset(scored), len(customer_ids), seconds)
        finally:
            shutil.rmtree(paths.root, ignore_errors=True)

    rescores = Coalescer(
        rescore_batch,
        config.api.rescore_workers,
        config.api.rescore_batch,
        config.api.rescore_linger_seconds,
    )
    audit = AuditLog(store)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        # Runs finish first: the warm connections must be idle when they are closed.
        await run_in_threadpool(rescores.close)
        await run_in_threadpool(audit.close)
        await run_in_threadpool(rescorers.stop)
        warm.close()
        if keyed is not None:
            keyed.close()
        rescorers.release()

    app = FastAPI(
        lifespan=lifespan,
        title="churnseg",
        summary="Customer segments, value tiers, lifecycle stages and churn risk, one at a time.",
        version=str(store.schema_version),
    )
    app.state.tokens = tokens
    app.add_middleware(AuditMiddleware, audit=audit)

    def require(who: Principal, scope: str) -> None:
        if not who.may(scope):
            raise HTTPException(403, f"token {who.name!r} lacks scope {scope!r}")

    def visible(who: Principal, customer_id: str) -> dict[str, Any]:
        """Return the customer's row, or 404 when unpublished or another owner's."""
        found = store.customer(customer_id)
        if found is None or (who.owner_id is not None and found["owner_id"] != who.owner_id):
            # The same answer for both: an owner's token cannot probe other owners' ids.
            raise HTTPException(404, f"customer {customer_id!r} not found")
        return found

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        request.state.detail = str(exc.detail)
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_input(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        request.state.detail = f"invalid input: {where}: {first.get('msg', '')}"[:500]
        return JSONResponse({"detail": jsonable_encoder(errors)}, 422)

    @app.exception_handler(PublishError)
    async def database_down(request: Request, exc: PublishError) -> JSONResponse:
        log.error("request %s: %s", getattr(request.state, "request_id", "?"), exc)
        request.state.detail = "output database unavailable"
        return JSONResponse({"detail": "the output database is unavailable"}, 503)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", "?")
        log.exception("request %s failed", request_id)
        request.state.detail = f"internal error: {type(exc).__name__}"
        return JSONResponse(
            {"detail": f"internal error (request {request_id}); the server log has the cause"},
            500,
        )

    @app.get("/health", response_model=Health, tags=["service"])
    def health() -> Health:
        """Say whether the output database answers, its schema version and newest snapshot."""
        snapshot = store.latest_snapshot()
        return Health(
            status="ok",
            schema_version=store.schema_version,
            snapshot=snapshot.isoformat() if snapshot else None,
        )

    @app.get("/customers/{customer_id}", response_model=CustomerRow, tags=["customers"])
    async def get_customer(customer_id: CustomerId, who: Caller) -> JSONResponse:
        """Return the customer's newest published row: classes, churn risk, reasons, owner."""
        require(who, "read")
        if store.target.is_sqlite:
            # An indexed lookup in a local file takes tens of microseconds: a hop to a worker
            # thread and back would cost more than the query.
            found = visible(who, customer_id)
        else:
            found = await run_in_threadpool(visible, who, customer_id)
        return JSONResponse(_row(found).model_dump())

    @app.post("/customers/{customer_id}/rescore", response_model=CustomerRow, tags=["customers"])
    async def rescore(customer_id: CustomerId, who: Caller, request: Request) -> CustomerRow:
        """Re-classify the customer now from the sources and publish the row (intra-day).

        The row replaces the customer's row in the newest snapshot (``update_kind``
        'intraday'); a customer new since the snapshot gets one. Requests that arrive while a
        rescore runs are computed together in the next one (``run_id`` names it).
        """
        require(who, "rescore")
        if who.owner_id is not None:
            await run_in_threadpool(visible, who, customer_id)
        try:
            batch = await asyncio.wrap_future(rescores.submit(customer_id))
        except IntradayUnavailableError as exc:
            raise HTTPException(409, str(exc)) from None
        except (SourceError, DataContractError) as exc:
            log.error("rescore %s: %s", customer_id, exc)
            raise HTTPException(503, f"the sources cannot be read: {exc}") from None
        if customer_id not in batch.scored:
            raise HTTPException(404, f"customer {customer_id!r} has no rows in the sources")
        request.state.detail = (
            f"rescored in {batch.run_id} with {batch.size} customer(s) in {batch.seconds:.2f} s"
        )
        found = await run_in_threadpool(store.customer, customer_id)
        if found is None:  # published and read back in the same database: cannot happen
            raise HTTPException(500, "the rescored row did not read back")
        return _row(found)

    @app.post("/feedback", response_model=FeedbackReceipt, status_code=201, tags=["feedback"])
    def feedback(
        body: Annotated[Correction | Contact, Field(discriminator="kind")],
        who: Caller,
        request: Request,
    ) -> FeedbackReceipt:
        """Record a correction of a class (who, what, why) or a contact outcome."""
        require(who, "feedback")
        request.state.customer_id = body.customer_id
        visible(who, body.customer_id)
        row: dict[str, Any] = {
            "feedback_id": uuid.uuid4().hex,
            "received_at": now_utc(),
            "customer_id": body.customer_id,
            "author": who.name,
        }
        if isinstance(body, Correction):
            refused = check_correction(body.field, body.value)
            if refused is not None:
                raise HTTPException(422, refused)
            row |= {
                "kind": CORRECTION,
                "field": body.field,
                "value": body.value,
                "reason": body.reason,
            }
            request.state.detail = f"correction {body.field} = {body.value}"
        else:
            row |= {
                "kind": CONTACT,
                "contacted_at": body.contacted_at,
                "channel": body.channel,
                "outcome": body.outcome,
            }
            request.state.detail = "contact outcome"
        store.feedback(row)
        return FeedbackReceipt(
            feedback_id=row["feedback_id"],
            received_at=row["received_at"].isoformat(),
            kind=row["kind"],
        )

    return app
