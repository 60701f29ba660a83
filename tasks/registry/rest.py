"""The registered model over REST for clients one does not control: ``tlp serve-model``.

MLflow's scoring server (``mlflow models serve``) reads the whole body of any size before
parsing it, and answers a failed prediction with the request data echoed back and, for any
error that is not an ``MlflowException``, the server's full stack trace
(``mlflow/pyfunc/scoring_server``: ``stack_trace=traceback.format_exc()``). This app keeps
MLflow's scoring app for everything else (``/ping``, ``/health``, ``/version``: the same
routes, the same model loading, the same JSON predictions) and answers ``/invocations``
itself, in front of it:

- a body over ``max_request_bytes`` is refused with 413 from its ``Content-Length`` (or as
  soon as the streamed bytes pass it), before anything is parsed;
- the body must be JSON ``{"inputs": ...}``; the model checks the images
  (``model_inputs``: shapes, dtypes, NaN, pixels, images per request, no paths);
- a refused request answers 400 with ``{"error_code", "message"}``: one short message,
  never the request data, a stack trace or a server path; an unexpected failure answers
  500 "internal error" and its traceback goes to the server's log only.
"""

from __future__ import annotations

import asyncio
import json
import logging
from io import StringIO

MAX_REQUEST_BYTES = 32 * 2**20
DRAIN_BYTES = 2**30
REQUEST_HELP = (
    'expected a JSON object {"inputs": [...]} whose images are arrays (HxW or HxWxC, uint8 '
    "0..255 or float 0..1) or base64-encoded PNG/JPEG strings"
)

log = logging.getLogger(__name__)


def create_app(model, max_request_bytes: int = MAX_REQUEST_BYTES):
    """MLflow's scoring app for a loaded pyfunc, with ``/invocations`` guarded (see above)."""
    from mlflow.pyfunc import scoring_server

    return GuardedScoring(scoring_server.init(model), model, max_request_bytes)


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error_code": code, "message": message}).encode()


class GuardedScoring:
    """An ASGI app: ``POST /invocations`` answered here, every other request by MLflow's."""

    def __init__(self, inner, model, max_request_bytes: int) -> None:
        from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT

        self.inner, self.model, self.max_bytes = inner, model, max_request_bytes
        self.timeout = MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") != "/invocations":
            await self.inner(scope, receive, send)
            return
        if scope["method"] != "POST":
            await respond(send, 405, error_body("METHOD_NOT_ALLOWED", "POST a JSON body"))
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"0")
        body = None
        if declared.isdigit() and int(declared) <= self.max_bytes:
            body = await read_body(receive, self.max_bytes)
        if body is None:
            await drain(receive, DRAIN_BYTES)  # the client reads the 413, not a reset
            await respond(send, 413, self.too_large())
            return
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        try:
            status, content = await asyncio.wait_for(
                asyncio.to_thread(self.answer, body, content_type), self.timeout
            )
        except TimeoutError:
            status, content = 504, error_body("TIMEOUT", "the prediction took too long")
        await respond(send, status, content)

    def too_large(self) -> bytes:
        return error_body("REQUEST_TOO_LARGE", f"the request body exceeds {self.max_bytes:,} bytes")

    def answer(self, body: bytes, content_type: str) -> tuple[int, bytes]:
        """Status and JSON body of one prediction request."""
        from mlflow.pyfunc.scoring_server import predictions_to_json

        from tasks.registry.model_inputs import InputError

        if content_type.split(";")[0].strip().lower() != "application/json":
            return 415, error_body("UNSUPPORTED_MEDIA_TYPE", "send Content-Type: application/json")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return 400, error_body("BAD_REQUEST", "the request body is not valid JSON")
        if not isinstance(payload, dict) or "inputs" not in payload:
            return 400, error_body("BAD_REQUEST", REQUEST_HELP)
        try:
            predictions = self.model.predict(payload["inputs"])
        except InputError as exc:
            return 400, error_body("BAD_REQUEST", exc.short)
        except Exception:
            log.exception("prediction failed")
            return 500, error_body("INTERNAL_ERROR", "internal error (see the server's log)")
        out = StringIO()
        predictions_to_json(predictions, out)
        return 200, out.getvalue().encode()


async def read_body(receive, limit: int) -> bytes | None:
    """The request body, or None as soon as it passes ``limit`` bytes (chunked uploads
    carry no Content-Length)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def drain(receive, limit: int) -> None:
    """Read and drop what is left of a refused body (at most ``limit`` bytes; a bigger one
    gets the connection closed after the answer): nothing of it is kept."""
    seen = 0
    while seen <= limit:
        message = await receive()
        seen += len(message.get("body", b""))
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return


async def respond(send, status: int, content: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})


def run(model, host: str, port: int, max_request_bytes: int) -> None:
    """Serve a loaded pyfunc with uvicorn in this process (one worker), until stopped.

    In-process, so it runs from ``.venv/bin/tlp`` without the venv on PATH (``mlflow models
    serve`` execs ``uvicorn`` from PATH)."""
    import uvicorn

    app = create_app(model, max_request_bytes)
    uvicorn.run(app, host=host, port=port, workers=1, log_level="warning", access_log=False)
