"""The one place that builds Redis clients and the one backoff: every client gets timeouts (no
hang on a dead peer) and waits grow, capped, then start over after a success."""

from __future__ import annotations

import redis.asyncio

from embedq.connection import MAX_CONNECTIONS, SOCKET_GRACE, Backoff, connect, producer_options


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(start=0.1, cap=0.5)
    assert [backoff.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    assert backoff.next() == 0.1


def test_clients_carry_their_roles_timeouts() -> None:
    client = connect("redis://127.0.0.1:1/0", socket_timeout=3.0, connect_timeout=2.0)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 3.0 and kwargs["socket_connect_timeout"] == 2.0
    assert kwargs["socket_keepalive"] is True
    aio = connect("redis://127.0.0.1:1/0", socket_timeout=1.0, asyncio=True)
    assert isinstance(aio, redis.asyncio.Redis)


def test_a_producer_waits_past_its_timeout_only_by_the_grace() -> None:
    options = producer_options(5.0)
    assert options["socket_timeout"] == 5.0 + SOCKET_GRACE
    assert options["max_connections"] == MAX_CONNECTIONS


def test_a_demoted_primarys_answers_drop_the_connection_so_the_retry_reconnects() -> None:
    from embedq.topology import FollowsPrimary, client_from_url, demoted

    assert demoted(redis.exceptions.ReadOnlyError("You can't write against a read only replica."))
    assert demoted(redis.exceptions.ResponseError("UNBLOCKED force unblock from blocking operation"))
    assert not demoted(redis.exceptions.ResponseError("WRONGTYPE Operation against a key"))
    client = client_from_url("redis://127.0.0.1:1/0")
    assert client.connection_pool.connection_class is FollowsPrimary
    tls = client_from_url("rediss://127.0.0.1:1/0?ssl_ca_certs=/x.pem")
    assert issubclass(tls.connection_pool.connection_class, redis.SSLConnection)
    assert tls.connection_pool.connection_kwargs["ssl_ca_certs"] == "/x.pem"
