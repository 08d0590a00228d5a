"""The FastAPI app: JSON API under /api, the page at /, OpenAPI docs at /docs.

Endpoints (request and response bodies are the scenario file's pydantic models where there is
one; every input is validated and a bad one gets 422 naming the field and the reason):

* ``GET /api/health`` — version, warm-up state, job counts.
* ``POST /api/simulate`` — one typical patient, every stage (:mod:`ketasim.web.single`).
* ``POST /api/trial`` — submit a scenario as a background job (202 with an unguessable id);
  ``GET /api/trial/{id}`` — status and progress; ``GET /api/trial/{id}/result`` — the summary;
  ``GET /api/trial/{id}/files/{name}`` — results.parquet, results.csv, summary.json,
  report.html.
* ``GET /api/models`` — the PK model cards; ``GET /api/experiments`` and
  ``GET /api/experiments/{name}`` — the named in-silico experiments;
* ``GET /api/validate`` / ``POST /api/validate`` — the clinical calibration targets
  (:func:`ketasim.clinic_calibration.evaluate`, ~1.5 min, run once in the background and cached
  on disk per set of card hashes);
* ``GET /api/examples`` — the shipped example scenarios.

Safety: no user input is evaluated as code; request bodies are capped (413); results are reached
only through job ids from :func:`secrets.token_urlsafe`; CORS is off unless origins are given;
``ketasim serve`` binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import Body, FastAPI, HTTPException, Path
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from .. import __version__
from ..errors import KetasimError
from ..scenario import ArmSpec, Scenario
from .jobs import Dispatcher, JobStore
from .single import (
    DISCLAIMER,
    ResponseCache,
    SimulateRequest,
    SimulateResponse,
    check_arm,
    simulate_json,
    simulate_one,
)

JOB_ID = r"^[A-Za-z0-9_-]{16,64}$"
ExperimentName = Annotated[str, Path(max_length=64, description="experiment name")]
IdPath = Annotated[str, Path(pattern=JOB_ID, description="job id from POST /api/trial")]
FILES = {"results.parquet": "application/vnd.apache.parquet", "results.csv": "text/csv",
         "summary.json": "application/json", "report.html": "text/html"}


@dataclass
class Settings:
    """Server limits and places (all configurable from ``ketasim serve``)."""

    data_dir: str = field(default_factory=lambda: os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "ketasim",
        "web"))
    max_n: int = 2000  # patients per trial job
    max_days: float = 120.0  # last visit of a trial job, days
    max_concurrent: int = 1  # trial jobs running at once
    max_active: int = 16  # trial jobs queued or running
    max_body_bytes: int = 64 * 1024
    max_attempts: int = 3  # a job interrupted by restarts this often fails
    job_mode: str = "process"  # "process" (spawn) or "thread"
    start_jobs: bool = True  # False: accept and queue jobs but run none (API checks)
    cors_origins: list[str] = field(default_factory=list)
    warm_up: bool = True
    validate_mode: str = "process"
    validate_fn: Callable[[], dict] | None = None
    simulate_cache: int = 256  # /api/simulate responses kept (LRU); 0: no cache
    simulate_workers: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))
    max_pending_simulations: int = 64  # distinct /api/simulate requests waiting; more: 503


# --------------------------------------------------------------------------- response models
class ErrorItem(BaseModel):
    """One validation problem: where (loc), what (msg) and its type."""
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """422: ``detail`` lists each bad field (``loc``) and the reason (``msg``)."""

    detail: list[ErrorItem] | str


class Health(BaseModel):
    """Service health: status, ketasim version and the research-use disclaimer."""
    status: Literal["ok"]
    version: str
    warm: bool
    jobs: dict[str, int]
    limits: dict[str, int | float]  # counts as integers, max_days in days
    disclaimer: str


class JobStatus(BaseModel):
    """A trial job: status, progress (patients done of total) and where its results are."""

    id: str
    status: Literal["queued", "running", "done", "failed"]
    done: int
    total: int
    progress: float = Field(ge=0.0, le=1.0)
    attempts: int
    created: float
    started: float | None
    finished: float | None
    error: str | None
    scenario: Scenario | None = Field(description="the submitted scenario (null if it no "
                                      "longer validates, e.g. after an upgrade)")
    links: dict[str, str]


class ModelInfo(BaseModel):
    """A PK model card: id, drug, routes, population and source."""
    id: str
    drug: str
    title: str
    routes: list[str]
    sampling: str
    default: bool
    species: str
    age_years: list[float]
    weight_kg: list[float]
    citation: str | None
    pmid: str | int | None
    doi: str | None


class ExperimentInfo(BaseModel):
    """A named in-silico experiment and what it tests."""
    name: str
    species: str
    finding: str


class ExperimentResult(BaseModel):
    """Readouts of one experiment run."""
    name: str
    species: str
    finding: str
    readouts: list[dict[str, Any]]
    model_config = {"extra": "allow"}


class ValidateStatus(BaseModel):
    """The clinical calibration targets (the literature scorecard is ``ketasim validate``)."""

    label: str
    status: Literal["idle", "running", "done", "failed"]
    targets: list[dict[str, Any]]
    met: int | None
    total: int | None
    error: str | None
    card_hashes: dict[str, str] = Field(description="every card's hash (the scores run "
                                        "through the PK, mechanism and clinic cards)")
    ketasim_version: str
    seeds: dict[str, int] = Field(description="the fixed population seed of each target "
                                  "study's virtual trial")


class InputGrammar(BaseModel):
    """The unit and word tables of the dose, duration and schedule parsers, so that the page
    can tell a value that the server would refuse (e.g. half-typed) without sending it."""

    dose_units: list[str] = Field(description="mass units of a dose (lower case, 'u' for µ); "
                                  "each may end in '/kg'")
    dose_allowed: str
    time_units_h: dict[str, float] = Field(description="time unit (lower case) → hours")
    time_allowed: str
    max_quantity_chars: int
    schedule_counts: dict[str, int] = Field(description="'twice' in 'twice weekly', ...")
    schedule_per_h: dict[str, float] = Field(description="'weekly' → 168 h, ...")
    schedule_help: str


class Options(BaseModel):
    """Choices the page offers (from the library and the cards)."""

    drugs: list[str]
    routes: list[str]
    models: dict[str, list[str]]
    hypotheses: dict[str, str]
    hypothesis_defaults: dict[str, float]
    interventions: dict[str, str]
    disorders: list[str]
    controls: list[str]
    bands_ng_per_ml: dict[str, float]
    max_days: float
    grammar: InputGrammar
    disclaimer: str


class Example(BaseModel):
    """A shipped example scenario: name, title and content."""
    name: str
    title: str
    scenario: Scenario


_ERR = {400: {"model": ErrorResponse, "description": "the body could not be read as JSON"},
        422: {"model": ErrorResponse, "description": "invalid input: field and reason"},
        413: {"model": ErrorResponse, "description": "request body too large"}}
_NOT_FOUND = {404: {"model": ErrorResponse, "description": "no such job"}}


# --------------------------------------------------------------------------- middleware
class SecurityHeaders:
    """Pure ASGI middleware: ``X-Content-Type-Options: nosniff`` on every response and the
    page's Content-Security-Policy on all but the Swagger UI (cheaper per request than
    Starlette's ``BaseHTTPMiddleware``)."""

    def __init__(self, app, csp: str) -> None:
        self.app = app
        self.csp = csp.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        with_csp = not scope.get("path", "").startswith(("/docs", "/redoc"))

        async def send_with_headers(msg):
            if msg["type"] == "http.response.start":
                hs = list(msg.get("headers") or [])
                names = {k.lower() for k, _ in hs}
                if b"x-content-type-options" not in names:
                    hs.append((b"x-content-type-options", b"nosniff"))
                if with_csp and b"content-security-policy" not in names:
                    hs.append((b"content-security-policy", self.csp))
                msg = {**msg, "headers": hs}
            await send(msg)

        return await self.app(scope, receive, send_with_headers)


class SimulateRunner:
    """Runs ``/api/simulate`` requests off the event loop: a cache hit is answered at once;
    identical requests in flight share one simulation (single flight); at most
    ``workers`` simulations run at a time (the engine releases the GIL, the Python around it
    does not: more threads than cores only add contention), and beyond ``max_pending``
    waiting ones the server answers 503 instead of queueing without bound."""

    def __init__(self, cache: ResponseCache | None, workers: int, max_pending: int) -> None:
        import anyio

        self.cache = cache
        self.limiter = anyio.CapacityLimiter(workers)
        self.max_pending = max_pending
        self._inflight: dict[str, asyncio.Future] = {}

    async def _compute(self, req: SimulateRequest, key: str) -> bytes:
        import anyio

        try:
            body, _ = await anyio.to_thread.run_sync(simulate_json, req, None,
                                                     limiter=self.limiter)
            if self.cache is not None:
                self.cache.put(key, body)
            return body
        finally:
            self._inflight.pop(key, None)

    async def run(self, req: SimulateRequest) -> tuple[bytes, str]:
        """The response body and how it was obtained (``hit``, ``shared`` or ``miss``)."""
        key = req.model_dump_json()
        if self.cache is not None:
            body = self.cache.get(key)
            if body is not None:
                return body, "hit"
        task = self._inflight.get(key)
        how = "shared"
        if task is None:
            if len(self._inflight) >= self.max_pending:
                raise HTTPException(503, f"{len(self._inflight)} simulations waiting; "
                                         "try again in a moment",
                                    headers={"Retry-After": "1"})
            task = asyncio.ensure_future(self._compute(req, key))
            self._inflight[key] = task
            how = "miss"
        # shield: a client that goes away does not cancel the others' simulation
        return await asyncio.shield(task), how


class BodyLimit:
    """Pure ASGI middleware: 413 for request bodies over ``limit`` bytes (declared or sent)."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        try:
            too_big = declared is not None and int(declared) > self.limit
        except ValueError:
            too_big = True
        chunks: list[bytes] = []
        size = 0
        if not too_big:
            more = True
            while more:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                chunk = msg.get("body", b"")
                size += len(chunk)
                if size > self.limit:
                    too_big = True
                    break
                chunks.append(chunk)
                more = msg.get("more_body", False)
        if too_big:
            resp = JSONResponse({"detail": [{"loc": ["body"], "msg": f"request body over "
                                             f"{self.limit} bytes", "type": "too_large"}]},
                                status_code=413)
            return await resp(scope, receive, send)
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'")


# --------------------------------------------------------------------------- validation job
def _validate_child(conn, parent_pid: int) -> None:
    """Body of the calibration worker process: run the check, send ``("ok", result)`` or
    ``("error", message)``; exit at once if the server process is gone (its parent changes)."""
    import time

    def _watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=_watch, daemon=True).start()
    try:
        from ..clinic_calibration import evaluate

        conn.send(("ok", evaluate()))
    except Exception as exc:  # noqa: BLE001 - reported through the endpoint
        conn.send(("error", f"{exc.__class__.__name__}: {exc}"))
    finally:
        conn.close()


class Validation:
    """The calibration-target check, run once per set of card hashes in the background."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lock = threading.Lock()
        self.state: dict[str, Any] = {"status": "idle", "error": None, "result": None}
        self.path = os.path.join(settings.data_dir, "validate.json")
        # every card: a PK or mechanism card edit changes the scores too, so the cache is
        # keyed on all of them
        self.hashes = _card_versions()
        self._proc: Any = None
        self._stopped = False
        try:
            with open(self.path, encoding="utf-8") as fh:
                cached = json.load(fh)
            if (cached.get("card_hashes") == self.hashes
                    and cached.get("ketasim_version") == __version__):
                self.state.update(status="done", result=cached["targets"])
        except (OSError, ValueError, KeyError):
            pass

    def start(self) -> None:
        """Start the calibration-target run in the background (no-op if running or cached)."""
        with self.lock:
            if self.state["status"] in ("running", "done"):
                return
            self.state.update(status="running", error=None)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            fn = self.settings.validate_fn
            if self.settings.validate_mode == "process" and fn is None:
                res = self._run_in_process()
            else:
                if fn is None:
                    from ..clinic_calibration import evaluate as fn
                res = fn()
            targets = [{"target": k, "value": float(v), "met": bool(ok)}
                       for k, (v, ok) in res.items()]
            tmp = self.path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump({"card_hashes": self.hashes, "ketasim_version": __version__,
                           "targets": targets}, fh)
            os.replace(tmp, self.path)
            self.state.update(status="done", result=targets)
        except Exception as exc:  # noqa: BLE001 - reported through the endpoint
            self.state.update(status="failed", error=f"{exc.__class__.__name__}: {exc}")

    def _run_in_process(self) -> dict:
        """``clinic_calibration.evaluate`` in a spawned child that :meth:`stop` can end (and
        that ends itself if this server process goes away)."""
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_validate_child, args=(send, os.getpid()), daemon=True,
                           name="ketasim-validate")
        with self.lock:
            if self._stopped:
                raise RuntimeError("server shutting down")
            self._proc = proc
            proc.start()
        send.close()
        try:
            kind, payload = recv.recv()
        except EOFError:
            raise RuntimeError(f"calibration worker ended (exit code {proc.exitcode})") from None
        finally:
            proc.join(5)
            with self.lock:
                self._proc = None
        if kind != "ok":
            raise RuntimeError(payload)
        return payload

    def stop(self, timeout: float = 5.0) -> None:
        """End a running calibration worker (server shutdown); the next start runs it again."""
        with self.lock:
            self._stopped = True
            proc = self._proc
        if proc is not None and proc.is_alive():
            proc.terminate()
            proc.join(timeout)
            if proc.is_alive():  # pragma: no cover - SIGTERM ignored
                proc.kill()
                proc.join(timeout)

    def view(self) -> dict:
        """The current state of the calibration-target run (status and, when done, results)."""
        t = self.state["result"] or []
        done = self.state["status"] == "done"
        return {"label": "calibration targets", "status": self.state["status"], "targets": t,
                "met": sum(x["met"] for x in t) if done else None,
                "total": len(t) if done else None, "error": self.state["error"],
                "card_hashes": self.hashes, "ketasim_version": __version__,
                "seeds": _calibration_seeds()}


def _calibration_seeds() -> dict[str, int]:
    from ..clinic_calibration import DESIGNS

    return {k: int(d["population"]["seed"]) for k, d in DESIGNS.items()}


def _card_versions() -> dict[str, str]:
    from ..cards import card_versions

    return card_versions()


# --------------------------------------------------------------------------- app
def _ketasim_error(exc: KetasimError, path: str = "") -> JSONResponse:
    # the trial body *is* the scenario: "scenario.arm[0].route" is at ["body", "arm", 0, ...]
    field = exc.field.removeprefix("scenario.").removeprefix("scenario ")
    field = field.replace("[", ".").replace("]", "")
    parts = [p for p in field.replace(" ", ".").split(".") if p]
    if path == "/api/simulate" and parts and parts[0] in ArmSpec.model_fields:
        parts = ["arm", *parts]  # an arm field checked after validation (route, model, ...)
    loc = ["body", *(int(p) if p.isdigit() else p for p in parts)]
    msg = exc.problem + (f" (allowed: {exc.allowed})" if exc.allowed else "")
    return JSONResponse({"detail": [{"loc": loc, "msg": msg, "type": "value_error"}]},
                        status_code=422)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    items = []
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        # a body that is not JSON at all is a bad request, not a bad value (docs/web.md)
        return JSONResponse({"detail": [{"loc": ["body"], "msg": "the body is not valid JSON",
                                         "type": "json_invalid"}]}, status_code=400)
    for e in errors:
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        items.append({"loc": [x if isinstance(x, int) else str(x) for x in e.get("loc", [])],
                      "msg": msg, "type": str(e.get("type", "value_error"))})
    return JSONResponse({"detail": items}, status_code=422)


def _static_dir() -> str:
    return str(resources.files("ketasim") / "web" / "static")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app (one :class:`JobStore` under ``settings.data_dir``)."""
    s = settings or Settings()
    os.makedirs(s.data_dir, exist_ok=True)
    store = JobStore(s.data_dir)
    dispatcher = Dispatcher(store, s.max_concurrent, s.job_mode)
    validation = Validation(s)
    warm = threading.Event()
    sim_cache = ResponseCache(s.simulate_cache) if s.simulate_cache > 0 else None
    sim_runner = SimulateRunner(sim_cache, s.simulate_workers, s.max_pending_simulations)

    def _warm() -> None:
        try:
            simulate_one(SimulateRequest.model_validate(
                {"arm": {"name": "warm-up", "drug": "ketamine", "route": "iv-infusion",
                         "dose": "0.5 mg/kg"}, "days": 2}))
        finally:
            warm.set()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.recovered = store.recover(s.max_attempts)
        if s.start_jobs:
            dispatcher.start()
        if s.warm_up:
            threading.Thread(target=_warm, daemon=True).start()
        else:
            warm.set()
        yield
        validation.stop()
        dispatcher.stop()

    app = FastAPI(title="ketasim", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None,
                  description="Simulator of ketamine for depression, from dose to mood. "
                              + DISCLAIMER)

    @app.get("/docs", include_in_schema=False)
    def api_docs():
        """OpenAPI docs (Swagger UI vendored under /static/vendor: no network needed)."""
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url="/openapi.json", title="ketasim API",
                                   swagger_js_url="/static/vendor/swagger-ui-bundle.js",
                                   swagger_css_url="/static/vendor/swagger-ui.css",
                                   swagger_favicon_url="data:,")
    app.state.settings = s
    app.state.store = store
    app.state.dispatcher = dispatcher
    app.state.validation = validation
    app.state.warm = warm
    app.state.simulate_cache = sim_cache
    app.state.simulate_runner = sim_runner

    app.add_exception_handler(KetasimError, lambda r, e: _ketasim_error(e, r.url.path))
    app.add_exception_handler(RequestValidationError, lambda r, e: _validation_error(e))
    if s.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=s.cors_origins,
                           allow_methods=["GET", "POST"], allow_headers=["content-type"])
    app.add_middleware(BodyLimit, limit=s.max_body_bytes)

    app.add_middleware(SecurityHeaders, csp=_CSP)

    # ------------------------------------------------------------------ API
    @app.get("/api/health", response_model=Health, tags=["meta"])
    def health() -> dict:
        """Liveness, version, whether the compiled kernels are warm, jobs by status."""
        return {"status": "ok", "version": __version__, "warm": warm.is_set(),
                "jobs": {k: store.count(k) for k in ("queued", "running", "done", "failed")},
                "limits": {"max_n": s.max_n, "max_days": s.max_days,
                           "max_concurrent": s.max_concurrent, "max_active": s.max_active,
                           "max_body_bytes": s.max_body_bytes},
                "disclaimer": DISCLAIMER}

    @app.post("/api/simulate", response_model=SimulateResponse, responses={
        **_ERR, 503: {"model": ErrorResponse, "description": "too many simulations waiting"}},
        tags=["simulate"])
    async def simulate(req: SimulateRequest) -> Response:
        """One typical patient (random effects 0, no visit noise), every stage on one grid.

        The body is built to the documented schema by :func:`simulate_one` and sent as is
        (re-validating ~15,000 numbers would cost more than the simulation); repeated
        requests are answered from an LRU cache (header ``X-Ketasim-Cache: hit``; ``shared``:
        the same request was already being simulated; ``miss``: simulated for this one)."""
        body, how = await sim_runner.run(req)
        return Response(body, media_type="application/json",
                        headers={"X-Ketasim-Cache": how})

    def _job_view(jid: str) -> dict:
        row = store.get(jid)
        if row is None:
            raise HTTPException(404, "no such job")
        links = {"self": f"/api/trial/{jid}"}
        if row.status == "done":
            links["result"] = f"/api/trial/{jid}/result"
            links.update({n: f"/api/trial/{jid}/files/{n}" for n in FILES})
        try:
            scenario = Scenario.model_validate(row.scenario)
        except ValueError:
            scenario = None
        return {"id": row.id, "status": row.status, "done": row.done, "total": row.total,
                "progress": min(1.0, row.done / row.total) if row.total else 0.0,
                "attempts": row.attempts, "created": row.created, "started": row.started,
                "finished": row.finished, "error": row.error,
                "scenario": scenario, "links": links}

    @app.post("/api/trial", status_code=202, response_model=JobStatus, tags=["trial"],
              responses={**_ERR, 429: {"model": ErrorResponse,
                                       "description": "too many jobs queued or running"}})
    def submit_trial(scenario: Annotated[Scenario, Body()]) -> dict:
        """Submit a virtual trial (the scenario file as JSON; arms under ``arm``)."""
        from ..trial import arm_sizes, scenario_dict, visit_schedule

        if scenario.population.n > s.max_n:
            raise KetasimError("scenario.population.n", f"{scenario.population.n} patients; "
                               f"this server runs at most {s.max_n} per job")
        _, visits = visit_schedule(scenario)
        if visits[-1] > s.max_days * 24.0:
            raise KetasimError("scenario.endpoints.at", f"last visit at {visits[-1] / 24:g} d; "
                               f"this server allows at most {s.max_days:g} d")
        for i, arm in enumerate(scenario.arms):
            check_arm(arm, f"scenario.arm[{i}]")
        total = sum(arm_sizes(scenario))
        if store.count("queued", "running") >= s.max_active:
            raise HTTPException(429, f"{s.max_active} jobs are queued or running; try later")
        jid = store.submit(scenario_dict(scenario), total)
        dispatcher.wake()
        return _job_view(jid)

    @app.get("/api/trial/{job_id}", response_model=JobStatus, responses={**_NOT_FOUND, **_ERR},
             tags=["trial"])
    def trial_status(job_id: IdPath) -> dict:
        """Status and progress of a trial job."""
        return _job_view(job_id)

    def _done_dir(job_id: str) -> str:
        row = store.get(job_id)
        if row is None:
            raise HTTPException(404, "no such job")
        if row.status != "done" or not row.result_dir:
            raise HTTPException(409, f"job is {row.status}" + (f": {row.error}" if row.error
                                                                 else ""))
        return row.result_dir

    _DONE = {**_NOT_FOUND, **_ERR, 409: {"model": ErrorResponse,
                                         "description": "job not finished (or failed)"}}

    @app.get("/api/trial/{job_id}/result", response_model=dict[str, Any], responses=_DONE,
             tags=["trial"])
    def trial_result(job_id: IdPath) -> dict:
        """The trial summary (the same JSON as ``ketasim trial --json``)."""
        with open(os.path.join(_done_dir(job_id), "summary.json"), encoding="utf-8") as fh:
            return json.load(fh)

    @app.get("/api/trial/{job_id}/files/{name}", responses={
        **_DONE, 200: {"description": "the file", "content": {t: {} for t in FILES.values()}}},
        tags=["trial"], response_class=FileResponse)
    def trial_file(job_id: IdPath, name: Literal["results.parquet", "results.csv",
                                                 "summary.json", "report.html"]):
        """Download one result file (CSV and Parquet: the long table, one row per patient
        and visit; report.html: the self-contained report)."""
        path = os.path.join(_done_dir(job_id), name)
        if not os.path.exists(path):
            raise HTTPException(404, f"{name} missing for this job")
        return FileResponse(path, media_type=FILES[name], filename=f"ketasim-{job_id[:8]}-"
                                                                   f"{name}")

    @app.get("/api/models", response_model=list[ModelInfo], tags=["library"])
    def models() -> list[dict]:
        """The PK model cards (as ``ketasim models --json``)."""
        from ..cards import load_pk_cards

        return [{"id": c.id, "drug": c.drug, "title": c.title, "routes": list(c.routes),
                 "sampling": c.sampling, "default": bool(c.default_for), "species": c.species,
                 "age_years": list(c.population.age_years),
                 "weight_kg": list(c.population.weight_kg), "citation": c.citation,
                 "pmid": c.pmid, "doi": c.doi} for c in load_pk_cards().values()]

    @app.get("/api/experiments", response_model=list[ExperimentInfo], tags=["library"])
    def experiments() -> list[dict]:
        """The named in-silico experiments."""
        from ..experiments import EXPERIMENTS

        return [{"name": e.name, "species": e.species, "finding": e.finding}
                for e in EXPERIMENTS.values()]

    @app.get("/api/experiments/{name}", response_model=ExperimentResult,
             responses={**_NOT_FOUND, **_ERR}, tags=["library"])
    def experiment(name: ExperimentName) -> dict:
        """Run one experiment (cached: the result depends only on the cards)."""
        from ..experiments import EXPERIMENTS

        if name not in EXPERIMENTS:
            raise HTTPException(404, f"no experiment named {name!r}")
        return _run_experiment(name)

    @app.get("/api/validate", response_model=ValidateStatus, tags=["library"])
    def validate_status() -> dict:
        """Calibration targets: status and, once done, value and pass/fail of each."""
        return validation.view()

    @app.post("/api/validate", response_model=ValidateStatus, status_code=202,
              tags=["library"])
    def validate_start() -> dict:
        """Start the calibration-target check in the background (no-op if done or running)."""
        validation.start()
        return validation.view()

    @app.get("/api/options", response_model=Options, tags=["library"])
    def options() -> dict:
        """Drugs, routes, PK models per drug, hypotheses (with the card's default weights),
        interventions and exposure bands: what the page's scenario builder offers."""
        from ..cards import load_drug, load_pk_cards
        from ..mechanism import HYPOTHESES, INTERVENTIONS, Hypotheses
        from ..regimen import _PER, _SCHEDULE_HELP, _WORD_NUM, ROUTES
        from ..units import (
            _MASS_UNITS,
            _TIME_ALIASES,
            DOSE_UNITS_ALLOWED,
            MAX_QUANTITY_CHARS,
            TIME_UNITS_ALLOWED,
            to_hours,
        )

        models: dict[str, list[str]] = {}
        for c in load_pk_cards().values():
            if c.species == "human" and c.drug in ("ketamine", "esketamine"):
                models.setdefault(c.drug, []).append(c.id)
        return {"drugs": ["ketamine", "esketamine"],
                "routes": [r for r in ROUTES if r != "ip"], "models": models,
                "hypotheses": dict(HYPOTHESES),
                "hypothesis_defaults": Hypotheses.default().as_dict(),
                "interventions": {k: v for k, v in INTERVENTIONS.items() if k != "mg"},
                "disorders": ["mdd", "trd", "bipolar"],
                "controls": ["saline", "active-placebo"],
                "bands_ng_per_ml": {k: float(v.value) for k, v in
                                    load_drug("ketamine").bands.items()},
                "max_days": min(s.max_days, 120.0),
                "grammar": {"dose_units": sorted(_MASS_UNITS), "dose_allowed": DOSE_UNITS_ALLOWED,
                            "time_units_h": {u: to_hours(1.0, u) for u in _TIME_ALIASES},
                            "time_allowed": TIME_UNITS_ALLOWED,
                            "max_quantity_chars": MAX_QUANTITY_CHARS,
                            "schedule_counts": dict(_WORD_NUM), "schedule_per_h": dict(_PER),
                            "schedule_help": _SCHEDULE_HELP},
                "disclaimer": DISCLAIMER}

    @app.get("/api/examples", response_model=list[Example], tags=["library"])
    def examples() -> list[dict]:
        """The example scenarios shipped with ketasim."""
        from ..trial import example_names, example_path

        out = []
        for n in example_names():
            from ..scenario import load_scenario

            sc = load_scenario(example_path(n))
            out.append({"name": n, "title": sc.title, "scenario": sc})
        return out

    # ------------------------------------------------------------------ page
    static = _static_dir()

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(os.path.join(static, "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=static), name="static")
    return app


@functools.lru_cache(maxsize=32)
def _run_experiment(name: str) -> dict:
    from ..cli import _jsonable
    from ..experiments import run_experiment

    return _jsonable(run_experiment(name))


def serve(host: str = "127.0.0.1", port: int = 8000, settings: Settings | None = None) -> None:
    """Run the app with uvicorn (blocking)."""
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


