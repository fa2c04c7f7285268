"""`lstmkit serve`: a saved language model over HTTP (FastAPI on uvicorn).

    GET  /         a page to sample from the model (text streams in) and to score text
    GET  /health   {"status": "ok", the model's level, cell, sizes, and the request limits}
    POST /sample   {"prime", "length", "temperature", "top_k", "top_p", "seed", "num_samples",
                    "stop_at"} -> server-sent events: `data: {"sample": i, "text": piece}` for
                   each piece as it is drawn (the prime first), then `event: end`
    POST /score    {"text"} -> the text's log-probability and perplexity, and each line's

A bad request gets a 4xx and {"error": one line}. Requests cannot make the server read files
(there is no path in the API) or allocate without bound: the body, prime, text, length and
number of samples are capped (`Limits`), and so is the number of requests in flight.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from lstmkit.errors import UserError
from lstmkit.fields import SEED_LIMIT
from lstmkit.lm.api import LanguageModelRun
from lstmkit.lm.serve_page import PAGE
from lstmkit.nn.kept import kept_weights_context


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: memory and time grow with each of these."""
    max_body_bytes: int = 1 << 20
    max_text_chars: int = 200_000  # /score
    max_prime_chars: int = 5_000
    max_length: int = 2_000  # tokens per sample
    max_num_samples: int = 8
    max_concurrent_requests: int = 16
    threads: int = 1  # torch's intra-op threads (see ModelThread)


class SampleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prime: str = ""
    length: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0, le=1e6)
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT)
    num_samples: int = Field(1, ge=1)
    stop_at: str | None = Field(None, min_length=1, max_length=100)


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str


class ModelThread:
    """Every use of the model runs on this one thread, a token at a time, so concurrent
    requests interleave token by token and never compete for the cores inside torch.

    `threads` is torch's intra-op threads: a token-by-token step is too small to split, and
    split across busy cores each step waits on the slowest (measured: 200 characters of a
    small char model in 0.17 s on 1 thread, 2-3.5 s on 2, on a shared 2-core machine).
    """

    def __init__(self, threads: int = 1) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lstmkit-model",
                                           initializer=torch.set_num_threads,
                                           initargs=(threads,))
        # The served weights never change: every call, and every sample's generator, shares
        # one kept block (nn/kept.py), so open streams hold one set of cast weights, not one
        # each (about 100 MB at `large`'s size in bf16).
        self.context = kept_weights_context()

    async def call(self, function: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, self.context.run, function, *args)

    async def stream(self, events: Iterator[tuple[int, str]]) -> AsyncIterator[str]:
        """`events` as server-sent events, each piece drawn on the model thread."""
        try:
            while (event := await self.call(next, events, None)) is not None:
                index, piece = event
                yield f"data: {json.dumps({'sample': index, 'text': piece})}\n\n"
            yield "event: end\ndata: {}\n\n"
        finally:  # also when the client goes away: the sampler restores the model's mode
            await self.call(_close, events)


def _close(events: Iterator) -> None:
    close = getattr(events, "close", None)
    if close is not None:
        close()


def create_app(run: LanguageModelRun, limits: Limits = Limits()) -> FastAPI:
    app = FastAPI(title="lstmkit", docs_url=None, redoc_url=None, openapi_url=None)
    model_thread = ModelThread(limits.threads)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(422, validation_message(err))

    @app.exception_handler(StarletteHTTPException)  # 404, 405, ...: the same {"error": line}
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return error_response(err.status_code, str(err.detail), err.headers)  # 405: Allow

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/health")
    def health() -> dict[str, Any]:
        shape = run.loaded.model.shape
        return {"status": "ok", "level": run.level, "cell": shape.cell,
                "vocab_size": shape.vocab_size, "hidden_size": shape.hidden_size,
                "num_layers": shape.num_layers, "quantize": run.quantize,
                "limits": asdict(limits)}

    @app.post("/sample")
    async def sample(request: SampleRequest) -> Any:
        reason = check_sample_request(request, limits)
        if reason:
            return error_response(422, reason)
        events = run.generate_samples(
            request.prime, request.length, request.temperature, request.top_k, request.seed,
            request.top_p, request.stop_at, request.num_samples)
        try:
            events = await model_thread.call(first_drawn, events)
        except UserError as err:
            return error_response(400, str(err))
        return StreamingResponse(model_thread.stream(events), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    @app.post("/score")
    async def score(request: ScoreRequest) -> Any:
        if len(request.text) > limits.max_text_chars:
            return error_response(413, f"text: {len(request.text):,} characters, the limit is "
                                       f"{limits.max_text_chars:,}")
        try:
            scored = await model_thread.call(run.score, request.text, True)
        except UserError as err:
            return error_response(400, str(err))
        return scored.to_dict()

    return app


def check_sample_request(request: SampleRequest, limits: Limits) -> str | None:
    """Why `request` asks for more than a request may (None: it does not)."""
    if len(request.prime) > limits.max_prime_chars:
        return f"prime: {len(request.prime):,} characters, the limit is {limits.max_prime_chars:,}"
    if request.length is not None and request.length > limits.max_length:
        return f"length: {request.length} tokens, the limit is {limits.max_length}"
    if request.num_samples > limits.max_num_samples:
        return f"num_samples: {request.num_samples}, the limit is {limits.max_num_samples}"
    return None


def first_drawn(events: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """Start `events` now, so a bad argument is a 4xx before the stream's 200 is sent."""
    first = next(events, None)
    if first is None:
        return iter(())

    def chained() -> Iterator[tuple[int, str]]:
        yield first
        yield from events

    return chained()


def error_response(status: int, reason: str, headers: dict[str, str] | None = None
                   ) -> JSONResponse:
    return JSONResponse({"error": reason.splitlines()[0] if reason else "bad request"},
                        status_code=status, headers=headers)


def validation_message(err: RequestValidationError) -> str:
    """pydantic's first complaint as one line: `field: what is wrong`."""
    errors = err.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    return f"{where or 'body'}: {first.get('msg', 'invalid')}"


class BodyLimit:
    """ASGI middleware: a body over `max_bytes` is refused (413) before it is all read.

    A declared Content-Length decides at once. A body without one (chunked) is read here, up
    to the limit, and handed on whole: refused from inside the app's own reading, it would
    become the framework's 400 "error parsing the body"."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_bytes:
                await self._refuse(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        handed = False

        async def replay():
            nonlocal handed
            if handed:
                return await receive()  # later messages: a disconnect
            handed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send) -> None:
        response = error_response(413, f"request body over {self.max_bytes:,} bytes")
        await response(scope, receive, send)


def serve(run: LanguageModelRun, host: str, port: int, limits: Limits = Limits()) -> None:
    """Serve `run` until interrupted."""
    import uvicorn

    print(f"lstmkit: serving {run.loaded.path} on http://{host}:{port}/", flush=True)
    uvicorn.run(create_app(run, limits), host=host, port=port, log_level="warning",
                limit_concurrency=limits.max_concurrent_requests)
