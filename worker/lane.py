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
from typing import Any

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


TAKE_LUA = """
local function take(source, processing, dead, limit, cap, worker, dead_max, peek, message)
  local keep, over = {}, {}
  if limit <= 0 then return keep, over end
  local items = redis.call('LRANGE', source, 0, limit - 1)
  if #items == 0 then return keep, over end
  redis.call('LTRIM', source, #items, -1)
  for _, item in ipairs(items) do
    if #item > cap then
      table.insert(over, #item)
      table.insert(over, string.sub(item, 1, peek))
      local reason = string.gsub(string.gsub(message, '{size}', #item), '{cap}', cap)
      redis.call('LPUSH', dead, cmsgpack.pack({
        code = 'request_too_large', worker = worker, raw = string.sub(item, 1, 256), raw_size = #item,
        reason = reason}))
    else
      table.insert(keep, item)
    end
  end
  if #over > 0 then redis.call('LTRIM', dead, 0, dead_max - 1) end
  if #keep > 0 then redis.call('RPUSH', processing, unpack(keep)) end
  return keep, over
end

local function taken(keep, over, wake, online, bulk)
  local t = redis.call('TIME')
  local a, b = redis.call('LLEN', online), redis.call('LLEN', bulk)
  if a + b == 0 then redis.call('DEL', wake) end
  local out = {t[1], t[2], a, b, #over / 2}
  for _, v in ipairs(over) do table.insert(out, v) end
  for _, v in ipairs(keep) do table.insert(out, v) end
  return out
end
"""
"""Lua shared by the take and finish scripts. ``take`` moves up to ``limit`` requests from
``source`` to ``processing``, FIFO, except those over ``cap`` bytes: those go to the dead-letter
list with ``message`` and only their size and first ``peek`` bytes are kept. ``taken`` lays out
what a take returns: Redis TIME, both lanes' depths after it, the oversized ones, then the rest;
with both lanes empty it clears the wake list, whose tokens then stand for requests already taken
(a later push leaves a new one), so no idle worker wakes for nothing."""

TAKE_SCRIPT = (
    TAKE_LUA
    + """
local keep, over = take(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3],
  tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6])
return taken(keep, over, KEYS[4], KEYS[5], KEYS[6])
"""
)
"""Move up to ARGV[1] requests from a request list (KEYS[1]) to a processing list (KEYS[2]),
those over ARGV[2] bytes to the dead-letter list (KEYS[3]) instead; returns what ``taken`` lays
out (KEYS[4] the wake list, KEYS[5] and KEYS[6] the online and bulk request lists)."""

FINISH_SCRIPT = (
    TAKE_LUA
    + """
local ttl, dead_max = tonumber(ARGV[1]), tonumber(ARGV[2])
local n_reply, n_attempts = tonumber(ARGV[3]), tonumber(ARGV[4])
local n_done, n_retry, n_dead = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local worker = ARGV[8]
local i = 14
local failed = {}
for k = 1, n_reply do
  local key = KEYS[7 + k]
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
for k = 1, n_attempts do redis.call('DEL', KEYS[7 + n_reply + k]) end
local limit = tonumber(ARGV[9])
if ARGV[13] == '1' and redis.call('LLEN', KEYS[7]) > 0 then limit = 0 end
local keep, over = take(KEYS[5], KEYS[6], KEYS[3], limit, tonumber(ARGV[10]), worker, dead_max,
  tonumber(ARGV[11]), ARGV[12])
return {failed, taken(keep, over, KEYS[4], KEYS[5], KEYS[7])}
"""
).replace("WAKE_MAX", str(WAKE_TOKENS_MAX))
"""Write replies with their expiry first (a reply key of the wrong type dead-letters that one
request: the others still go), then drop answered requests from a processing list (KEYS[1]),
requeue retries at the back of their request list (KEYS[2]) with a wake token (KEYS[4]), add
dead letters (capped, KEYS[3]) and clear their attempt counters. Another error stops the script
before its first write, so the worker can retry all of it. Then, in the same step, take the next
online batch: up to ARGV[9] requests from the online list (KEYS[5]) into its processing list
(KEYS[6]), none when ARGV[13] is '1' (the background lane's turn) and the bulk list (KEYS[7])
has work. Returns the failed reply indexes and what ``taken`` lays out for that take."""

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


FRESH_S = 0.002
"""A look at the request lists this recent still tells whether they are empty (the loop's own
Python between one batch's reply and its next decision takes a fraction of it)."""


@dataclass
class Depths:
    """What the last script of this worker saw of both request lists, right after it ran:
    enough to skip a take that would find nothing. A reading is good for the next decision only,
    and only while fresh (``consume``); skipping a take on it never loses a request, since every
    push leaves a wake token for the worker's blocking wait."""

    online: int | None = None
    bulk: int | None = None
    at: float = 0.0
    """Monotonic time of the reading."""

    def saw(self, online: int, bulk: int) -> None:
        """Both lanes' depths, just read by a script."""
        self.online, self.bulk, self.at = online, bulk, time.monotonic()

    def consume(self, fresh_s: float = FRESH_S) -> tuple[int | None, int | None]:
        """The last reading if it is at most ``fresh_s`` old (else None for both), forgotten
        once read."""
        seen = (self.online, self.bulk) if time.monotonic() - self.at <= fresh_s else (None, None)
        self.online = self.bulk = None
        return seen


@dataclass(frozen=True)
class NextTake:
    """The online batch a finish script takes in the same round trip, for the next turn."""

    limit: int
    """Requests to take at most."""
    limits: Limits
    """The online lane's limits: requests over its byte cap are dead-lettered, not taken, and the
    rest are parsed under them."""
    unless_bulk: bool = False
    """Take nothing if the background lane has work: its turn comes first."""


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
        then: NextTake | None = None,
    ) -> tuple[list[int], list[Any]]:
        """Replies, removal of ``done`` from ``processing``, retries onto ``queue`` and dead
        letters, atomically, then (``then``) this worker's next online batch taken. Returns the
        indexes of replies that could not be delivered (their key held another type:
        dead-lettered instead) and the take's raw answer (``RedisQueue.read_take``)."""
        cleared = [d.request_id for d in dead if d.request_id]
        online, online_processing = self.keys.queue, self.keys.processing(self.worker)
        keys = [processing, queue, self.keys.dead, self.keys.wake, online, online_processing, self.keys.bulk]
        keys += [self.keys.reply(r.id) for r in replies]
        keys += [self.keys.attempts(rid) for rid in cleared]
        limit, cap = (then.limit, then.limits.byte_cap) if then else (0, 0)
        args: list[bytes | int | str] = [
            self.reply_ttl,
            self.dead_max,
            len(replies),
            len(cleared),
            len(done),
            len(retry),
            len(dead),
            self.worker,
            limit,
            cap,
            PEEK_BYTES,
            TOO_LARGE,
            int(bool(then and then.unless_bulk)),
        ]
        args += [r.pack() for r in replies]
        args += [*done, *retry]
        args += [d.pack() for d in dead]
        failed, took = self._scripts.finish(keys=keys, args=args)
        return [int(i) for i in failed], took

    def count_attempts(self, request_ids: Sequence[str]) -> list[int]:
        """Add one failed attempt to each request; returns their totals."""
        if not request_ids:
            return []
        keys = [self.keys.attempts(rid) for rid in request_ids]
        return [int(n) for n in self._scripts.attempts(keys=keys, args=[ATTEMPTS_TTL_S])]


class RedisQueue:
    """Takes requests from one request list (a lane: online or bulk) into this worker's
    processing list for it, and answers them atomically. The lanes of one worker share its
    Redis clock and its reading of both lanes' depths (``Depths``)."""

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
        clock: RedisClock | None = None,
        depths: Depths | None = None,
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
        self.clock = clock or RedisClock()
        """Redis time, measured again by every take and finish (their scripts read ``TIME``)."""
        self.depths = depths or Depths()
        """Both lanes' depths as the last take or finish saw them."""
        self._pipelined_wake = not isinstance(client, redis.RedisCluster)
        """A cluster client routes each command of a pipeline on its own: wait, then take."""

    def take(self, limit: int, *, block: float) -> list[Taken]:
        """Up to ``limit`` requests, FIFO, in one round trip. ``block`` > 0: first wait up to
        that long for a wake token (a producer leaves one with each push), so that an idle
        worker never receives a request through a blocking pop, which cannot check its size;
        the wait and the take are sent together, so Redis runs the take the moment the token
        comes (or the wait ends: a request pushed without a token is found then)."""
        k = self.keys
        keys = [self.source, self.processing, k.dead, k.wake, k.queue, k.bulk]
        args: list[str | int] = [limit, self.limits.byte_cap, self.worker_id, self.dead_max]
        args += [PEEK_BYTES, TOO_LARGE]
        if block > 0:
            if self._pipelined_wake:
                taken = self._wake_and_take(block, keys, args)
                if taken is not None:
                    return taken
            elif self.redis.blpop([k.wake], timeout=block) is None:
                return []
        sent = time.monotonic()
        reply = self._scripts.take(keys=keys, args=args)
        return self.read_take(reply, self.limits, timed=(sent, time.monotonic()))

    def _wake_and_take(self, block: float, keys: list[str], args: list[str | int]) -> list[Taken] | None:
        """The blocking wait for a token and the take script in one pipeline; None when Redis
        does not hold the script yet (after a restart): the caller then runs it, which loads it."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.blpop([self.keys.wake], timeout=block)
        pipe.execute_command("EVALSHA", self._scripts.take.sha, len(keys), *keys, *args)
        woke, reply = pipe.execute(raise_on_error=False)
        if isinstance(woke, Exception):
            raise woke
        if isinstance(reply, redis.exceptions.NoScriptError):
            return None
        if isinstance(reply, Exception):
            raise reply
        # when the script ran within the wait is not known here: its TIME stamps the requests,
        # but the clock's offset is measured by the calls whose round trip is known
        return self.read_take(reply, self.limits)

    def read_take(
        self, reply: Sequence[Any], limits: Limits, *, timed: tuple[float, float] | None = None
    ) -> list[Taken]:
        """The requests of a take's answer (``taken`` in the scripts: Redis TIME, both lanes'
        depths, the oversized ones, then the rest), parsed under ``limits``; notes the depths
        and, with ``timed`` (monotonic sent, received), the Redis clock."""
        if timed is not None:
            self.clock.update(reply[:2], *timed)
        self.depths.saw(int(reply[2]), int(reply[3]))
        now = time_reply_ms(reply[:2])
        n_over = int(reply[4])
        taken = []
        for k in range(n_over):
            size, head = int(reply[5 + 2 * k]), bytes(reply[6 + 2 * k])
            message = too_large_message(size, limits.byte_cap)
            rejected = Rejected("request_too_large", message, peek_id(head))
            taken.append(Taken(raw=head, taken_ms=now, rejected=rejected, held=False))
        taken.extend(_parse(raw, now, limits) for raw in reply[5 + 2 * n_over :])
        return taken

    def now_ms(self) -> int:
        """Redis time now, in ms (from the last script's ``TIME`` and this host's monotonic clock)."""
        return self.clock.now_ms()

    def finish(
        self, batch: Sequence[Taken], out: Outcomes, then: NextTake | None = None
    ) -> tuple[list[int], list[Taken]]:
        """In one atomic step: write the replies (with their expiry) and dead letters of ``out``,
        put its retries at the back of the queue, drop ``batch`` from the processing list and
        (``then``) take the next online batch. Returns the indexes of undeliverable replies
        (dead-lettered) and the requests taken."""
        sent = time.monotonic()
        failed, took = self.writer.write(
            self.processing,
            queue=self.source,
            replies=out.replies,
            done=[t.raw for t in batch if t.held],
            retry=out.retry,
            dead=out.dead,
            then=then,
        )
        limits = then.limits if then else self.limits  # nothing taken without ``then``
        return failed, self.read_take(took, limits, timed=(sent, time.monotonic()))

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


def _parse(raw: bytes, now: int, limits: Limits) -> Taken:
    try:
        return Taken(raw=raw, taken_ms=now, request=parse_request(raw, limits))
    except Rejected as rejected:
        return Taken(raw=raw, taken_ms=now, rejected=rejected)
