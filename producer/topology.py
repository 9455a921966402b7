"""Where Redis is: a plain URL (one server, or a name a managed service moves on failover) or a
Sentinel-managed primary, and what every client does when the primary it talks to is demoted.

URL forms (every embedq client reads them, through ``client_from_url``):

- ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS; ``?ssl_ca_certs=...``), as
  redis-py reads them;
- ``redis+sentinel://[user:password@]host1:26379,host2:26379/service[/db]`` (``rediss+sentinel``
  for TLS to the sentinels and the primary): the user and password are the primary's;
  ``?sentinel_username=...&sentinel_password=...`` authenticate to the sentinels when they
  want it. Clients ask the sentinels for the primary and ask again after a failover.

A failover that is not announced (a managed Redis moves a DNS name; a primary is demoted under
its clients) shows as ``READONLY`` on the old primary, or ``UNBLOCKED`` for a blocked command.
Every connection embedq opens turns those into a dropped connection and a ``ConnectionError``,
so the client's one retry reconnects (through DNS, or by asking the sentinels) to the primary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

import redis
import redis.asyncio
import redis.asyncio.connection
import redis.asyncio.sentinel
import redis.sentinel
from redis.exceptions import ConnectionError, ResponseError

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_TIMEOUT_S = 2.0
"""Connect and socket timeout of the connections to the sentinels themselves."""


CLUSTER_UNSUPPORTED = (
    "this Redis is in cluster mode: use a redis+cluster:// (rediss+cluster://) URL and a queue "
    "named with a hash tag, EMBED_QUEUE={embed}:requests, so that every key of the deployment is "
    "in one hash slot"
)
"""What a client or worker says when it meets Redis Cluster through a plain URL or with a queue
name that is not a hash tag (MOVED, ASK, CROSSSLOT)."""
CLUSTER_NEEDS_TAG = (
    "on Redis Cluster the queue must be named with a hash tag, e.g. '{{embed}}:requests' (not "
    "{queue!r}), so that every key of the deployment is in one hash slot"
)


def clustered(exc: BaseException) -> bool:
    """True for the answers only a Redis Cluster node gives (MOVED, ASK, CROSSSLOT, CLUSTERDOWN)."""
    cluster_only = (
        redis.exceptions.MovedError,
        redis.exceptions.AskError,
        redis.exceptions.ClusterCrossSlotError,
        redis.exceptions.ClusterDownError,
    )
    return isinstance(exc, cluster_only) or str(exc).startswith(("CROSSSLOT", "CLUSTERDOWN"))


def demoted(exc: ResponseError) -> bool:
    """True for the errors a demoted primary answers: READONLY, or UNBLOCKED for a blocked pop."""
    return isinstance(exc, redis.exceptions.ReadOnlyError) or str(exc).startswith("UNBLOCKED")


class _FollowsPrimary:
    """Mixin for redis-py connections: a demoted primary's answer drops the connection and
    raises ``ConnectionError``, which the client's retry turns into a reconnect."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except ResponseError as exc:
            if not demoted(exc):
                raise
            self.disconnect()  # type: ignore[attr-defined]
            raise ConnectionError(f"the primary was demoted ({exc}): reconnecting") from exc


class _AsyncFollowsPrimary:
    """``_FollowsPrimary`` for redis.asyncio connections."""

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)  # type: ignore[misc]
        except ResponseError as exc:
            if not demoted(exc):
                raise
            await self.disconnect()  # type: ignore[attr-defined]
            raise ConnectionError(f"the primary was demoted ({exc}): reconnecting") from exc


class FollowsPrimary(_FollowsPrimary, redis.Connection):
    """A TCP connection that reconnects when its primary is demoted."""


class FollowsPrimarySSL(_FollowsPrimary, redis.SSLConnection):
    """A TLS connection that reconnects when its primary is demoted."""


class AsyncFollowsPrimary(_AsyncFollowsPrimary, redis.asyncio.connection.Connection):
    """An asyncio TCP connection that reconnects when its primary is demoted."""


class AsyncFollowsPrimarySSL(_AsyncFollowsPrimary, redis.asyncio.connection.SSLConnection):
    """An asyncio TLS connection that reconnects when its primary is demoted."""


@dataclass(frozen=True)
class SentinelUrl:
    """A ``redis+sentinel://`` URL, parsed."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> SentinelUrl:
        """The parts of ``url``, or ``ValueError`` saying what form is expected."""
        form = "redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]"
        scheme, sep, rest = url.partition("://")
        if scheme not in SENTINEL_SCHEMES or not sep:
            raise ValueError(f"not a Sentinel URL: expected {form}")
        rest, _, query = rest.partition("?")
        netloc, _, path = rest.partition("/")
        credentials, at, hosts = netloc.rpartition("@")
        username = password = None
        if at:
            user, _, pw = credentials.partition(":")
            username, password = unquote(user) or None, unquote(pw) or None
        sentinels = []
        for item in hosts.split(","):
            host, _, port = item.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"Sentinel address {item!r} is not host:port: expected {form}")
            sentinels.append((host.strip("[]"), int(port)))
        parts = [p for p in path.split("/") if p]
        if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
            raise ValueError(f"a Sentinel URL names the service (and a db number): expected {form}")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        unknown = set(params) - {"sentinel_username", "sentinel_password"}
        if unknown:
            raise ValueError(f"unknown Sentinel URL parameter {sorted(unknown)[0]!r}")
        return cls(
            sentinels=tuple(sentinels),
            service=unquote(parts[0]),
            db=int(parts[1]) if len(parts) == 2 else 0,
            username=username,
            password=password,
            sentinel_username=params.get("sentinel_username"),
            sentinel_password=params.get("sentinel_password"),
            tls=scheme == "rediss+sentinel",
        )


def is_cluster(url: str) -> bool:
    """True for a ``redis+cluster://`` or ``rediss+cluster://`` URL."""
    return url.partition("://")[0] in CLUSTER_SCHEMES


def is_sentinel(url: str) -> bool:
    """True for a ``redis+sentinel://`` or ``rediss+sentinel://`` URL."""
    return url.partition("://")[0] in SENTINEL_SCHEMES


def client_from_url(url: str, *, asyncio: bool = False, **options: Any) -> Any:
    """A redis-py client (sync, or asyncio) for any URL form above, on its own pool, whose
    connections follow the primary; ``options`` are redis-py client options."""
    if is_cluster(url):
        plain = url.replace("+cluster://", "://", 1)
        options.pop("connection_class", None)
        if asyncio:
            return redis.asyncio.RedisCluster.from_url(plain, **options)
        return redis.RedisCluster.from_url(plain, **options)
    if is_sentinel(url):
        spec = SentinelUrl.parse(url)
        sentinel_kwargs = {
            "socket_timeout": SENTINEL_TIMEOUT_S,
            "socket_connect_timeout": SENTINEL_TIMEOUT_S,
            "username": spec.sentinel_username,
            "password": spec.sentinel_password,
            "ssl": spec.tls,
        }
        primary: dict[str, Any] = {"db": spec.db, "username": spec.username, "password": spec.password}
        primary["ssl"] = spec.tls
        if asyncio:
            manager = redis.asyncio.sentinel.Sentinel(list(spec.sentinels), sentinel_kwargs=sentinel_kwargs)
            return manager.master_for(spec.service, redis_class=redis.asyncio.Redis, **primary, **options)
        sync_manager = redis.sentinel.Sentinel(list(spec.sentinels), sentinel_kwargs=sentinel_kwargs)
        return sync_manager.master_for(spec.service, redis_class=redis.Redis, **primary, **options)
    scheme = url.partition("://")[0]
    if scheme in ("redis", "rediss") and "connection_class" not in options:
        tls = scheme == "rediss"
        if asyncio:
            options["connection_class"] = AsyncFollowsPrimarySSL if tls else AsyncFollowsPrimary
        else:
            options["connection_class"] = FollowsPrimarySSL if tls else FollowsPrimary
    if asyncio:
        return redis.asyncio.Redis.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


def where(client: Any) -> str:
    """Where ``client`` connects, for error messages, never with a password: a cluster's first
    node, a Sentinel service, or the server's address."""
    if isinstance(client, (redis.RedisCluster, redis.asyncio.RedisCluster)):
        nodes = client.get_nodes()
        first = f"{nodes[0].host}:{nodes[0].port}" if nodes else "?"
        return f"redis+cluster://{first} ({len(nodes)} nodes)"
    pool = client.connection_pool
    service = getattr(pool, "service_name", None)
    if service is not None:
        return f"the Sentinel-managed primary {service!r}"
    kwargs = pool.connection_kwargs
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
