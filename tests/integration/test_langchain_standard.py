"""LangChain's own standard test suites (langchain-tests) for ``EmbedqEmbeddings``, built with the
obvious spelling of its options, against a real worker and the real model."""

from __future__ import annotations

from typing import ClassVar

import pytest

from embedq import EmbedqEmbeddings
from tests.support.servers import RedisServer, WorkerProcess

standard = pytest.importorskip("langchain_tests.integration_tests")
unit = pytest.importorskip("langchain_tests.unit_tests")


@pytest.fixture(scope="module")
def langchain_worker(default_worker: WorkerProcess) -> WorkerProcess:
    """The session's default worker (the bundled model, every setting at its default)."""
    return default_worker


@pytest.fixture(autouse=True)
def _embeddings_params(
    request: pytest.FixtureRequest, redis_server: RedisServer, langchain_worker: WorkerProcess
) -> None:
    """The suites build ``EmbedqEmbeddings(**embedding_model_params)``: point them at the worker."""
    type(request.instance).params = {
        "redis_url": redis_server.url,
        "queue": langchain_worker.queue,
        "timeout": 20.0,
    }


class EmbedqParams:
    """What both suites need to build ``EmbedqEmbeddings`` (``params`` set by the fixture above)."""

    params: ClassVar[dict[str, object]] = {}

    @property
    def embeddings_class(self) -> type[EmbedqEmbeddings]:
        return EmbedqEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, object]:
        return self.params


class TestEmbedqEmbeddingsStandard(EmbedqParams, standard.EmbeddingsIntegrationTests):  # type: ignore[misc,name-defined]
    pass


class TestEmbedqEmbeddingsUnit(EmbedqParams, unit.EmbeddingsUnitTests):  # type: ignore[misc,name-defined]
    pass
