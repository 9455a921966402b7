"""The worker's side of one request list (a lane: online or bulk): take requests, answer them.

Each request taken is moved into this worker's processing list in the same script, and removed
from it only by the script that writes its reply, so a worker that dies holding a batch leaves
its requests in Redis, not in lost memory. Requests over the byte cap never leave Redis whole:
the take script dead-letters them and hands the worker only their first bytes, enough to find
an id to answer. Every script reads Redis's clock, the only one all hosts share.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from embedq.clock import RedisClock, time_reply_ms
from embedq.protocol import (
    PEEK_BYTES,
    TOO_LARGE,
    WAKE_TOKENS_MAX,
    Keys,
    Limits,
    Rejected,
    Reply,
    Request,
    parse_request,
    peek_id,
    too_large_message,
)

from .outcomes import DeadLetter, Outcomes

ATTEMPTS_TTL_S = 3600
"""A request's attempt counter outlives any sensible deadline, then goes by itself."""


@dataclass(frozen=True)
class Taken:
    """One raw request taken off the queue, parsed: either ``request`` or ``rejected`` is set.

    ``taken_ms`` is the Redis time of the take; ``held`` is False for a request the take script
    already removed (over the byte cap): nothing of it is left in the processing list.
    """

    raw: bytes
    taken_ms: int
    request: Request | None = None
    rejected: Rejected | None = None
    held: bool = True

    @property
    def size(self) -> int:
        """Texts this item adds to a batch (0 for a refused request)."""
        return len(self.request.texts) if self.request is not None else 0


TAKE_SCRIPT = """
local t = redis.call('TIME')
local limit, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {t[1], t[2], 0}
local items = redis.call('LRANGE', KEYS[1], 0, limit - 1)
if #items == 0 then return out end
redis.call('LTRIM', KEYS[1], #items, -1)
local keep, over = {}, {}
for _, item in ipairs(items) do
  if #item > cap then
    table.insert(over, #item)
    table.insert(over, string.sub(item, 1, tonumber(ARGV[5])))
    local reason = string.gsub(string.gsub(ARGV[6], '{size}', #item), '{cap}', cap)
    redis.call('LPUSH', KEYS[3], cmsgpack.pack({
      code = 'request_too_large', worker = ARGV[3], raw = string.sub(item, 1, 256), raw_size = #item,
      reason = reason}))
  else
    table.insert(keep, item)
  end
end
if #over > 0 then redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[4]) - 1) end
if #keep > 0 then redis.call('RPUSH', KEYS[2], unpack(keep)) end
out[3] = #over / 2
for _, v in ipairs(over) do table.insert(out, v) end
for _, v in ipairs(keep) do table.insert(out, v) end
return out
"""
"""Move up to ARGV[1] requests from a request list (KEYS[1]) to a processing list (KEYS[2]),
FIFO, except those over ARGV[2] bytes: those go to the dead-letter list (KEYS[3], with the
message ARGV[6]) and only their size and first ARGV[5] bytes come back. Returns Redis TIME, the
oversized ones, then the rest."""

FINISH_SCRIPT = """
local ttl, dead_max = tonumber(ARGV[1]), tonumber(ARGV[2])
local n_reply, n_attempts = tonumber(ARGV[3]), tonumber(ARGV[4])
local n_done, n_retry, n_dead = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local worker = ARGV[8]
local i = 9
local failed = {}
for k = 1, n_reply do
  local key = KEYS[4 + k]
  local ok = redis.pcall('RPUSH', key, ARGV[i])
  if type(ok) == 'table' and ok.err then
    if string.sub(ok.err, 1, 9) ~= 'WRONGTYPE' then return redis.error_reply(ok.err) end
    table.insert(failed, k - 1)
    redis.call('LPUSH', KEYS[3], cmsgpack.pack({code = 'reply_undeliverable', worker = worker,
      reply_key = key, reason = 'the reply key holds a value of another type: ' .. ok.err}))
    n_dead = n_dead + 1
  else
    redis.call('EXPIRE', key, ttl)
  end
  i = i + 1
end
for k = 1, n_done do redis.call('LREM', KEYS[1], 1, ARGV[i]); i = i + 1 end
for k = 1, n_retry do redis.call('RPUSH', KEYS[2], ARGV[i]); i = i + 1 end
if n_retry > 0 then redis.call('RPUSH', KEYS[4], 1); redis.call('LTRIM', KEYS[4], -WAKE_MAX, -1) end
local n_letters = n_dead - #failed
for k = 1, n_letters do redis.call('LPUSH', KEYS[3], ARGV[i]); i = i + 1 end
if n_dead > 0 then redis.call('LTRIM', KEYS[3], 0, dead_max - 1) end
for k = 1, n_attempts do redis.call('DEL', KEYS[4 + n_reply + k]) end
return failed
""".replace("WAKE_MAX", str(WAKE_TOKENS_MAX))
"""Write replies with their expiry first (a reply key of the wrong type dead-letters that one
request: the others still go), then drop answered requests from a processing list (KEYS[1]),
requeue retries at the back of their request list (KEYS[2]) with a wake token (KEYS[4]), add
dead letters (capped, KEYS[3]) and clear their attempt counters. Another error stops the script
before its first write, so the worker can retry all of it. Returns the failed reply indexes."""

ATTEMPTS_SCRIPT = """
local out = {}
for k = 1, #KEYS do
  out[k] = redis.call('INCR', KEYS[k])
  redis.call('EXPIRE', KEYS[k], tonumber(ARGV[1]))
end
return out
"""
"""Add one failed attempt to each counter (KEYS) and renew its expiry; returns the totals."""

PUT_BACK_SCRIPT = """
for k = #ARGV, 1, -1 do
  redis.call('LREM', KEYS[2], 1, ARGV[k])
  redis.call('LPUSH', KEYS[1], ARGV[k])
end
redis.call('RPUSH', KEYS[3], 1)
redis.call('LTRIM', KEYS[3], -WAKE_MAX, -1)
return #ARGV
""".replace("WAKE_MAX", str(WAKE_TOKENS_MAX))
"""Move requests (ARGV, in order) from a processing list (KEYS[2]) back to the head of their
request list (KEYS[1]), in their order, and leave a wake token (KEYS[3])."""


class Scripts:
    """The Lua scripts one Redis client runs, registered once."""

    def __init__(self, client: redis.Redis) -> None:
        self.take = client.register_script(TAKE_SCRIPT)
        self.finish = client.register_script(FINISH_SCRIPT)
        self.attempts = client.register_script(ATTEMPTS_SCRIPT)
        self.put_back = client.register_script(PUT_BACK_SCRIPT)


class ReplyWriter:
    """Writes what became of a batch in one atomic script call (one round trip): used by a
    worker for its own processing lists, and by the reaper for a dead worker's."""

    def __init__(
        self, client: redis.Redis, keys: Keys, *, reply_ttl: int, dead_max: int, worker: str
    ) -> None:
        self.keys = keys
        self.reply_ttl = reply_ttl
        self.dead_max = dead_max
        self.worker = worker
        self._scripts = Scripts(client)

    def write(
        self,
        processing: str,
        *,
        queue: str,
        replies: Sequence[Reply] = (),
        done: Sequence[bytes] = (),
        retry: Sequence[bytes] = (),
        dead: Sequence[DeadLetter] = (),
    ) -> list[int]:
        """Replies, removal of ``done`` from ``processing``, retries onto ``queue`` and dead
        letters, atomically; returns the indexes of replies that could not be delivered (their
        key held another type: dead-lettered instead)."""
        cleared = [d.request_id for d in dead if d.request_id]
        keys = [processing, queue, self.keys.dead, self.keys.wake]
        keys += [self.keys.reply(r.id) for r in replies]
        keys += [self.keys.attempts(rid) for rid in cleared]
        args: list[bytes | int | str] = [
            self.reply_ttl,
            self.dead_max,
            len(replies),
            len(cleared),
            len(done),
            len(retry),
            len(dead),
            self.worker,
        ]
        args += [r.pack() for r in replies]
        args += [*done, *retry]
        args += [d.pack() for d in dead]
        return [int(i) for i in self._scripts.finish(keys=keys, args=args)]

    def count_attempts(self, request_ids: Sequence[str]) -> list[int]:
        """Add one failed attempt to each request; returns their totals."""
        if not request_ids:
            return []
        keys = [self.keys.attempts(rid) for rid in request_ids]
        return [int(n) for n in self._scripts.attempts(keys=keys, args=[ATTEMPTS_TTL_S])]


class RedisQueue:
    """Takes requests from one request list (a lane: online or bulk) into this worker's
    processing list for it, and answers them atomically."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        worker_id: str,
        *,
        limits: Limits,
        reply_ttl: int,
        dead_max: int,
        bulk: bool = False,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.worker_id = worker_id
        self.lane = "bulk" if bulk else "online"
        online, bulk_lane = keys.lanes(worker_id)
        self.source, self.processing = bulk_lane if bulk else online
        self.limits = limits
        self.dead_max = dead_max
        self.writer = ReplyWriter(client, keys, reply_ttl=reply_ttl, dead_max=dead_max, worker=worker_id)
        self._scripts = self.writer._scripts
        self.clock = RedisClock()
        """Redis time, measured again by every take (its script reads ``TIME``)."""

    def take(self, limit: int, *, block: float) -> list[Taken]:
        """Up to ``limit`` requests, FIFO, in one round trip. ``block`` > 0: first wait up to
        that long for a wake token (a producer leaves one with each push), so that an idle
        worker never receives a request through a blocking pop, which cannot check its size."""
        if block > 0 and self.redis.blpop([self.keys.wake], timeout=block) is None:
            return []
        sent = time.monotonic()
        reply = self._scripts.take(
            keys=[self.source, self.processing, self.keys.dead],
            args=[limit, self.limits.byte_cap, self.worker_id, self.dead_max, PEEK_BYTES, TOO_LARGE],
        )
        self.clock.update(reply[:2], sent, time.monotonic())
        now = time_reply_ms(reply[:2])
        n_over = int(reply[2])
        taken = []
        for k in range(n_over):
            size, head = int(reply[3 + 2 * k]), bytes(reply[4 + 2 * k])
            message = too_large_message(size, self.limits.byte_cap)
            rejected = Rejected("request_too_large", message, peek_id(head))
            taken.append(Taken(raw=head, taken_ms=now, rejected=rejected, held=False))
        taken.extend(self._parse(raw, now) for raw in reply[3 + 2 * n_over :])
        return taken

    def now_ms(self) -> int:
        """Redis time now, in ms (from the last take's ``TIME`` and this host's monotonic clock)."""
        return self.clock.now_ms()

    def _parse(self, raw: bytes, now: int) -> Taken:
        try:
            return Taken(raw=raw, taken_ms=now, request=parse_request(raw, self.limits))
        except Rejected as rejected:
            return Taken(raw=raw, taken_ms=now, rejected=rejected)

    def finish(self, batch: Sequence[Taken], out: Outcomes) -> list[int]:
        """In one atomic step: write the replies (with their expiry) and dead letters of ``out``,
        put its retries at the back of the queue, and drop ``batch`` from the processing list.
        Returns the indexes of undeliverable replies (dead-lettered)."""
        return self.writer.write(
            self.processing,
            queue=self.source,
            replies=out.replies,
            done=[t.raw for t in batch if t.held],
            retry=out.retry,
            dead=out.dead,
        )

    def count_attempts(self, request_ids: Sequence[str]) -> list[int]:
        """Add one failed attempt to each request; returns their totals."""
        return self.writer.count_attempts(request_ids)

    def put_back(self, items: Sequence[Taken]) -> None:
        """Return taken-but-unanswered requests to the head of their list, in their order."""
        held = [t.raw for t in items if t.held]
        if held:
            self._scripts.put_back(keys=[self.source, self.processing, self.keys.wake], args=held)

    def recover(self) -> int:
        """Move whatever this worker id left in its processing list (a crash, a restart with the
        same id) back to the head of the request list; returns how many."""
        moved = 0
        while self.redis.lmove(self.processing, self.source, "RIGHT", "LEFT") is not None:
            moved += 1
        if moved:
            self.redis.rpush(self.keys.wake, 1)
            self.redis.ltrim(self.keys.wake, -WAKE_TOKENS_MAX, -1)
        return moved

    def depth(self) -> int:
        """Requests waiting in this lane's request list."""
        return int(self.redis.llen(self.source))
