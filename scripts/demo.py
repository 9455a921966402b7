"""A real round trip through Redis and a worker, as a chatbot API would do it."""

from __future__ import annotations

import time

import numpy as np

from embedq import EmbeddingClient
from embedq.defaults import setting

QUESTION = "Which cafe serves brunch and specialty coffee?"
DOCS = [
    "The store serves brunch and specialty coffee; weekday afternoons are busy and parking is tight.",
    "Our pasta place near Gangnam station opens at 11 and takes reservations for groups.",
    "A vegan bakery with gluten-free bread, closed on Mondays.",
]


def main() -> None:
    url = setting("redis_url")
    with EmbeddingClient.from_url(url, timeout=10.0) as client:
        started = time.perf_counter()
        query = client.embed_query("연남 카페 추천해줘")
        took = (time.perf_counter() - started) * 1000
        print(
            f"embed_query('연남 카페 추천해줘'): {len(query)} dims, norm {np.linalg.norm(query):.4f}, "
            f"{took:.1f} ms, first values {np.round(query[:4], 4).tolist()}"
        )

        call = client.call([QUESTION])
        client.send(call)
        q = client.wait(call)[0]
        reply = call.replies[0]
        assert reply is not None
        print(f"worker {reply.worker}: queue {reply.queue_ms:.1f} ms, encode {reply.encode_ms:.1f} ms")
        docs = np.array(client.embed_documents(DOCS))
        print(f"\nembed_documents({len(DOCS)} docs) -> ranking for {QUESTION!r}:")
        for score, doc in sorted(zip(docs @ q, DOCS, strict=True), reverse=True):
            print(f"  {score:.3f}  {doc}")
    print("\ndemo: OK")


if __name__ == "__main__":
    main()
