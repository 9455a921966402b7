"""Redis ACL rules for each embedq role, so that one Redis can hold users that cannot harm
each other: ``embedq acl --role worker|producer|bulk`` prints them.

Redis 7 selectors (the parenthesised groups) grant a command on some keys only: a producer may
push requests and pop its own replies, but cannot read the request list (other users'
questions), push a reply (forge an answer), write the query cache (poison a vector), or touch
a worker's keys. Commands a Lua script calls are checked against the same rules, so the
enqueue script grants nothing more. No role but the workers' may list keys (SCAN, KEYS,
RANDOMKEY): a reply key is a request's random 128-bit id, so a user who cannot list keys cannot
find another's reply to steal it. No role may kill or list other connections. ``status`` reads
and writes nothing else: what ``embedq status`` (or a dashboard) needs.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass

from .protocol import DEFAULT_QUEUE, Keys

ROLES = ("worker", "producer", "bulk", "status")

CONNECT = "+ping +time +script|load +client|setname +hello"
"""What every role needs to connect and load scripts (redis-py's CLIENT SETINFO, new in Redis 7.2,
may be refused: redis-py carries on without it)."""

WORKER_COMMANDS = (
    "+evalsha +eval +blpop +lmove +lpush +rpush +lrange +ltrim +lrem +lindex +llen "
    "+expire +pexpire +pttl +incr +del +set +get +mget +exists +sadd +srem +smembers +info"
)
"""A worker's commands, on its namespace's keys only (the Lua scripts' commands included)."""

BULK_DENIED = "-scan -randomkey -script|flush -script|kill -function|flush -function|delete -function|restore"
"""What ``-@dangerous`` leaves to RQ's ``+@all`` that would let a bulk user harm others: list the
whole keyspace (and so learn reply keys), or drop everyone's loaded scripts."""


@dataclass(frozen=True)
class AclRules:
    """The ACL of one role on one queue's namespace."""

    role: str
    queue: str = DEFAULT_QUEUE
    rq_prefix: str = "rq:"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}: choose one of {', '.join(ROLES)}")

    def rules(self) -> list[str]:
        """The ACL rules (each a word of ``ACL SETUSER``), after ``reset``."""
        keys = Keys(self.queue)
        ns = keys.namespace
        base = ["resetkeys", "resetchannels", "-@all", *CONNECT.split()]
        replies = f"(+blpop +lpop +del +unlink %RW~{ns}:reply:*)"
        watch = f"(+smembers +mget +get +exists %R~{keys.workers} %R~{ns}:heartbeat:*)"
        wake = f"(+ltrim %RW~{keys.wake})"
        cache = f"(+mget %R~{ns}:cache:*)"  # look entries up; writing them is the workers' alone
        if self.role == "worker":
            return [*base, f"~{ns}:*", *WORKER_COMMANDS.split()]
        if self.role == "producer":
            return [
                *base,
                f"(+evalsha +eval %RW~{keys.queue} %RW~{keys.bulk} %RW~{keys.wake})",
                f"(+rpush %W~{keys.queue} %W~{keys.bulk} %W~{keys.wake})",
                f"(+llen %R~{keys.queue} %R~{keys.bulk})",
                wake,
                replies,
                watch,
                cache,
            ]
        if self.role == "status":
            return [*base, f"(+llen +smembers +mget +get +exists %R~{ns}:*)", "+info"]
        rq = self.rq_prefix
        return [
            *base,
            f"~{rq}*",
            f"&{rq}*",
            "+@all",
            "-@dangerous",  # CLIENT KILL / LIST, KEYS, MONITOR, CONFIG, FLUSHALL, ...
            *BULK_DENIED.split(),
            "+info",
            "+client|setname",
            "+client|getname",
            f"(+rpush %W~{keys.bulk} %W~{keys.wake})",
            wake,
            replies,
            watch,
            cache,
        ]

    def command(self, user: str, password: str) -> str:
        """``ACL SETUSER`` for redis-cli, each word shell-quoted."""
        return shlex.join(["ACL", "SETUSER", user, "reset", "on", f">{password}", *self.rules()])

    def aclfile_line(self, user: str, password: str) -> str:
        """The same user as a line of a Redis ``aclfile`` (password stored as its SHA-256)."""
        digest = hashlib.sha256(password.encode()).hexdigest()
        return " ".join(["user", user, "on", f"#{digest}", *self.rules()])
