"""``embedq serve``: an OpenAI-compatible HTTP front door to the workers (extra ``api``; no torch).

``POST /v1/embeddings`` speaks OpenAI's embeddings API, so the openai SDKs in every language work
unchanged; ``POST /embed`` keeps embedq's own shape (kind, truncate); ``GET /v1/models`` lists
what the live workers serve; ``/healthz`` is 200 only while Redis answers and a worker is live;
``/metrics`` counts requests per route and status. Every error has OpenAI's shape
(``{"error": {"message", "type", "param", "code"}}``). One ``AsyncEmbeddingClient`` per process.

Modules: ``settings``, ``app`` (wiring), ``routes`` (handlers at module level), ``state`` (what
the routes share), ``errors``, ``limits``, ``schemas``, ``metrics``.
"""

from .app import create_app
from .errors import ApiError, error_body
from .limits import BodyLimit
from .settings import ApiSettings

__all__ = ["ApiError", "ApiSettings", "BodyLimit", "create_app", "error_body"]
