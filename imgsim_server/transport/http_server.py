"""HTTP/JSON beside gRPC (the `[http]` extra): FastAPI on uvicorn, on an event loop of its own
thread, over the same Dataplane, so both protocols share its batcher and cache.

Endpoints: `POST /v1/compare` (multipart `image_a`, `image_b`, `model`; or JSON with base64
images), `POST /v1/embed`, `GET /v1/models`, `GET /healthz`, `GET /readyz`, `GET /metrics` (when
Prometheus is on), OpenAPI docs at `/docs`, and the two-photo page at `/`. JSON field names are
the proto's. Errors are `{"error": {"code": "INVALID_ARGUMENT", "message": ...}}`:
`HTTP_STATUS` maps an error's kind to grpc-gateway's status and the gRPC code name, so a client
sees one vocabulary whichever protocol it speaks. Imports nothing of the gRPC side.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources

try:
    import python_multipart  # noqa: F401  (multipart forms; Starlette imports it late)
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.routing import Match
    from swagger_ui_bundle import swagger_ui_path  # noqa: F401  (the offline /docs)
except ImportError as exc:  # pragma: no cover - exercised by installs without the extra
    raise ImportError(
        f'--http-port needs the [http] extra ({exc.name} is missing): pip install "imgsim[http]"'
    ) from exc

from imgsim_server import errors
from imgsim_server.auth import check_bearer
from imgsim_server.core.dataplane import Dataplane
from imgsim_server.memory import Charge
from imgsim_server.transport.http_limits import HttpLimits, protocol_class

log = logging.getLogger(__name__)

OPEN_PATHS = ("/", "/livez", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json")
REQUEST_TIMEOUT_S = 60.0
BAD_REQUEST = (400, "INVALID_ARGUMENT")
UNMATCHED = "unmatched"  # the one metrics label of every path that no route serves
# Bytes held per body byte while a request is parsed: base64 JSON keeps the body, the decoded
# string and the image; a multipart form keeps the body's chunks and the file's bytes.
BODY_COPIES = {"application/json": 3, "multipart/form-data": 2}
_STATUS_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    413: "RESOURCE_EXHAUSTED",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
}


# Error kind -> (HTTP status, gRPC code name), after grpc-gateway; 413 for an image over a limit.
HTTP_STATUS: dict[str, tuple[int, str]] = {
    "invalid_argument": (400, "INVALID_ARGUMENT"),
    "too_large": (413, "INVALID_ARGUMENT"),
    "no_face": (422, "FAILED_PRECONDITION"),
    "not_found": (404, "NOT_FOUND"),
    "failed_precondition": (400, "FAILED_PRECONDITION"),
    "resource_exhausted": (429, "RESOURCE_EXHAUSTED"),
    "unavailable": (503, "UNAVAILABLE"),
    "deadline_exceeded": (504, "DEADLINE_EXCEEDED"),
    "cancelled": (499, "CANCELLED"),
    "unauthenticated": (401, "UNAUTHENTICATED"),
    "internal": (500, "INTERNAL"),
}


class HttpError(Exception):
    """A request that is wrong as HTTP (body size, content type), with its status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def http_status_for(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, code name, message) that report `exc` to a caller; an internal error is
    logged with its traceback and reported without its text."""
    if isinstance(exc, HttpError):
        return exc.status, exc.code, str(exc)
    kind = errors.kind_of(exc)
    if kind == "internal":
        log.error("internal error", exc_info=exc)
    return (*HTTP_STATUS[kind], errors.public_message(exc))


def error_response(exc: BaseException) -> JSONResponse:
    """The JSON error body and HTTP status of an exception."""
    status, code, message = http_status_for(exc)
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


@dataclass(frozen=True)
class HttpSettings:
    """What the HTTP side shares with the gRPC side of one server."""

    max_body_bytes: int
    auth_token: str = ""
    # (ready, why): the server's readiness, the same truth as gRPC Health
    ready: Callable[[], tuple[bool, str]] = lambda: (True, "serving")
    on_call: Callable[[str, str], None] | None = None  # (route, code name), for metrics
    metrics_text: Callable[[], bytes] | None = None  # Prometheus exposition, or None


def _web_dir():
    return resources.files("imgsim_server.transport") / "web"


def _b64(value: object, field: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise HttpError(*BAD_REQUEST, f"{field}: expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise HttpError(*BAD_REQUEST, f"{field}: not valid base64") from None


async def _read_images(request: Request, fields: tuple[str, ...], limit: int):
    """(images by field, model) from a multipart form or a JSON object with base64 images."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form(max_files=len(fields), max_part_size=limit)
        out = {}
        for f in fields:
            part = form.get(f)
            if part is None or isinstance(part, str):
                raise HttpError(*BAD_REQUEST, f"missing file field {f!r}")
            out[f] = await part.read()
        model = form.get("model") or ""
        return out, model if isinstance(model, str) else ""
    if kind.startswith("application/json"):
        try:
            body = await request.json()
        except ValueError:
            raise HttpError(*BAD_REQUEST, "body is not valid JSON") from None
        if not isinstance(body, dict):
            raise HttpError(*BAD_REQUEST, "body must be a JSON object")
        return {f: _b64(body.get(f), f) for f in fields}, str(body.get("model") or "")
    raise HttpError(
        415, "INVALID_ARGUMENT", "send multipart/form-data (files) or application/json (base64)"
    )


def _compare_body(fields: tuple[str, ...]) -> dict:
    """OpenAPI description of a request that is multipart files or base64 JSON."""
    model = {"model": {"type": "string", "description": "registry name; empty: the default"}}

    def schema(fmt: str) -> dict:  # "binary": a file part; "byte": a base64 string
        props = {f: {"type": "string", "format": fmt} for f in fields}
        return {"schema": {"type": "object", "properties": props | model, "required": [*fields]}}

    content = {"multipart/form-data": schema("binary"), "application/json": schema("byte")}
    return {"requestBody": {"required": True, "content": content}}


def build_app(core: Dataplane, settings: HttpSettings) -> FastAPI:
    """The ASGI app over `core`."""
    app = FastAPI(
        docs_url=None,  # served below from local files: the CDN default fails offline
        redoc_url=None,
        title="imgsim",
        description="Image similarity over HTTP/JSON, beside the gRPC service (same core, "
        "same batching and cache). Field names are those of imgsim/v1/similarity.proto.",
        version="1",
    )
    # The bundled Swagger UI (4.15) reads OpenAPI 3.0 documents; this schema needs nothing of 3.1.
    app.openapi_version = "3.0.3"

    def route_of(request: Request) -> str:
        """The route template that serves this path (one label per route, not per path)."""
        for route in app.router.routes:
            match, _ = route.matches(request.scope)
            if match is Match.FULL:
                return getattr(route, "path", UNMATCHED)
        return UNMATCHED

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        charge = Charge(core.budget)
        try:
            if settings.auth_token and not (
                path in OPEN_PATHS or path.startswith(("/static/", "/docs-static/"))
            ):
                check_bearer(request.headers.get("authorization", ""), settings.auth_token)
            size = request.headers.get("content-length")
            if request.method == "POST" and not (size and size.isdigit()):
                # Bodies are read whole; a chunked one could not be bounded before reading it.
                raise HttpError(411, "INVALID_ARGUMENT", "a POST needs a Content-Length header")
            if size is not None and size.isdigit() and int(size) > settings.max_body_bytes:
                raise HttpError(
                    413,
                    "RESOURCE_EXHAUSTED",
                    f"request body of {size} bytes is over the limit of "
                    f"{settings.max_body_bytes} (--max-message-mb)",
                )
            if size and size.isdigit() and int(size):
                kind = request.headers.get("content-type", "").split(";")[0].strip()
                charge.add(int(size) * BODY_COPIES.get(kind, 1), "this request's body")
            response = await call_next(request)
        except Exception as exc:
            response = error_response(exc)
        finally:
            charge.release()
        if settings.on_call is not None and path.startswith("/v1/"):
            code = "OK" if response.status_code < 400 else f"HTTP_{response.status_code}"
            settings.on_call(f"HTTP {request.method} {route_of(request)}", code)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_exception(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """404, 405, malformed multipart forms: the documented error body, not Starlette's."""
        code = _STATUS_CODES.get(exc.status_code, "UNKNOWN")
        body = {"error": {"code": code, "message": str(exc.detail)}}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        message = errors.bounded_message(str(exc.errors()))
        body = {"error": {"code": "INVALID_ARGUMENT", "message": message}}
        return JSONResponse(body, status_code=400)

    @app.post(
        "/v1/compare",
        summary="Similarity of two images",
        openapi_extra=_compare_body(("image_a", "image_b")),
    )
    async def compare(request: Request) -> dict:
        """`score`, `model` and `verdict` (calibrated models) as in CompareResponse; with
        `?verify=true`, also `inliers`, `verified` and `verification` (geometric verification:
        "yes", "no" or "cannot tell"); with the face
        model, `face_a` and `face_b`, the boxes of the faces that matched (422
        FAILED_PRECONDITION when an image has no face)."""
        images, model = await _read_images(request, ("image_a", "image_b"), settings.max_body_bytes)
        verify = request.query_params.get("verify", "").lower() in ("1", "true", "yes")
        a, b = images["image_a"], images["image_b"]
        pair = await core.compare(a, b, model, REQUEST_TIMEOUT_S, verify=verify)
        out = {"score": pair.score, "model": pair.model, "verdict": pair.verdict}
        if pair.inliers is not None:
            out |= {
                "inliers": pair.inliers,
                "verified": pair.verified,
                "verification": pair.verification,
            }
        if pair.face_a is not None:
            out |= {"face_a": asdict(pair.face_a), "face_b": asdict(pair.face_b)}
        return out

    @app.post(
        "/v1/embed", summary="Embedding of one image", openapi_extra=_compare_body(("image",))
    )
    async def embed(request: Request) -> dict:
        """`vector`, `dimension`, `similarity` and `model` as in EmbedResponse, and with the
        face model `faces` (each face's `box` and `vector`, largest first)."""
        images, model = await _read_images(request, ("image",), settings.max_body_bytes)
        emb = await core.embed(images["image"], model, REQUEST_TIMEOUT_S)
        out = {
            "model": emb.model,
            "vector": emb.vector.tolist(),
            "dimension": emb.dimension,
            "similarity": emb.similarity,
        }
        if emb.faces:
            out["faces"] = [{"box": asdict(f.box), "vector": f.vector.tolist()} for f in emb.faces]
        return out

    @app.get("/v1/models", summary="The server's models, as ListModels")
    async def models() -> dict:
        """ListModelsResponse's fields (a test checks the names against the proto)."""
        listing = await core.list_models()
        return {
            "models": [m.to_dict() for m in listing.models],
            "default_model": listing.default_model,
            "collection_model": listing.collection_model,
        }

    @app.get("/livez", summary="Liveness: the process serves HTTP (200 from the start)")
    async def livez() -> dict:
        return {"status": "LIVE"}

    @app.get("/readyz", summary="Readiness: gRPC Health's state; 503 with the reason until ready")
    async def readyz():
        ready, reason = settings.ready()
        body = {"status": "SERVING" if ready else "NOT_SERVING", "reason": reason}
        return JSONResponse(body, status_code=200 if ready else 503)

    app.get("/healthz", summary="Readiness, as /readyz (kept for compatibility)")(readyz)

    web = _web_dir()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((web / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=str(web)), name="static")
    _mount_docs(app)
    if settings.metrics_text is not None:
        metrics_text = settings.metrics_text

        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(metrics_text(), media_type="text/plain; version=0.0.4")

    return app


def _mount_docs(app: FastAPI) -> None:
    """OpenAPI docs at /docs from swagger-ui-bundle's files (part of [http]), never a CDN."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-static", StaticFiles(directory=str(swagger_ui_path)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="imgsim API",
            swagger_js_url="/docs-static/swagger-ui-bundle.js",
            swagger_css_url="/docs-static/swagger-ui.css",
            swagger_favicon_url="/docs-static/favicon-32x32.png",
        )


class _EmbeddedServer(uvicorn.Server):
    """uvicorn on a thread of its own: the gRPC server keeps the signal handling."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


@dataclass
class HttpServer:
    """A started HTTP server, on an event loop of its own thread: a flood of HTTP connections
    (accepting thousands in one go stalls a loop for a second) never delays gRPC's loop."""

    server: _EmbeddedServer
    thread: threading.Thread
    port: int
    limits: HttpLimits
    failure: list

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.get_running_loop().run_in_executor(None, self.thread.join, 15)


# asyncio accepts up to `backlog` connections per wake-up of the listening socket; a smaller
# burst keeps each wake-up short, and the queue still absorbs a flood of connects.
HTTP_BACKLOG = 512


async def start_http(
    app: FastAPI,
    host: str,
    port: int,
    tls: tuple | None = None,
    limits: HttpLimits | None = None,
) -> HttpServer:
    """Serve `app` on host:port (0 = a free port) on a new thread with its own event loop;
    `tls` is (cert, key, client_ca or None) as for gRPC; `limits` bounds connections and the
    time to receive a request."""
    limits = limits or HttpLimits()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it a keep-alive response written in two parts waits 40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    kwargs: dict = {}
    if tls is not None:
        cert, key, client_ca = tls
        kwargs = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
        if client_ca is not None:
            kwargs.update(ssl_ca_certs=str(client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
    config = uvicorn.Config(
        app,
        http=protocol_class(limits),
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
        backlog=HTTP_BACKLOG,
        **kwargs,
    )
    server = _EmbeddedServer(config)
    failure: list = []

    def run() -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as exc:  # reported to start_http, or logged once serving
            failure.append(exc)
            if server.started:
                log.exception("HTTP server stopped")

    thread = threading.Thread(target=run, name="imgsim-http", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise failure[0] if failure else RuntimeError("the HTTP server did not start")
        await asyncio.sleep(0.01)
    return HttpServer(server, thread, sock.getsockname()[1], limits, failure)
