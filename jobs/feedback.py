"""Served traffic -> training samples: ``python -m jobs.feedback export --redis-url URL --out DIR``.

Reads the service's impression and click streams (``contracts.keys``) with a consumer group, waits
out the label window, labels each impression (1 if a click was attributed to it), and writes
hour-partitioned Parquet (``DIR/2026-12-02T06/part-….parquet``) in the sample layout of
``model.data``: ``label``, ``user_id``, each candidate field ``f`` with the history as scored in
``hist_f``, the profile and context as scored, plus ``ts``, ``request_id``, ``model_version``,
``served_ctr``, ``rank`` and ``degraded``.

One exporter per stream (it is the group's one consumer). A one-shot run holds the pending part
of the streams in memory; the streams' MAXLEN bounds it.

Attribution: a click naming a ``request_id`` goes to that answer's impression of its item; without
one (or when that answer did not show the item) to the user's latest impression of the item that
is at most a label window older than the click.

Exactly once. Each stream key (one on a single server, ``STREAM_SHARDS`` on a cluster) is exported
in id order, and an entry is ripe when its id time is a label window old, so what is exported of a
key is always a prefix of it: a watermark per key. A batch is written as files under temporary
names, fsynced, renamed, and only then committed by a line in ``_exports.jsonl`` (fsynced) holding
every key's watermark; then the stream entries are acknowledged. A restarted exporter deletes
files of an uncommitted batch, acknowledges pending entries at or below the committed watermark
without writing them again, and re-reads the rest from its pending list. Clicks stay pending until
no impression they could belong to remains unexported.
"""

from __future__ import annotations

import calendar
import json
import os
import shutil
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
from redis.exceptions import RedisError, ResponseError

from contracts.cli import Parser
from contracts.erasure import erased_users, tombstone
from contracts.exported import COMMITS, fsync, locked, read_commits, write_commits
from contracts.keys import Keys, decode_feedback
from contracts.redis_client import SyncClient, keys_for, sync_client
from contracts.settings import tools
from jobs.erase import apply_tombstones
from jobs.records import click_problem, impression_problem, typed_tables

GROUP = "din-export"
CONSUMER = "exporter"
READ_COUNT = 1000
BATCH_ANSWERS = 50_000  # answers per committed batch (its files are written at once, in memory)
FLUSH_SLACK_SECONDS = 60.0  # an impression reaches the stream at most this long after it was served
DEFAULT_WINDOW_SECONDS = 30 * 60.0
DEAD_LETTERS_KEPT = 100_000  # entries of the dead-letter stream (approximate); its counts are kept whole


@dataclass
class Summary:
    """What one export pass did."""

    impressions: int  # sample rows written
    answers: int  # /score answers they came from
    waiting: int  # answers still inside the label window
    set_aside: Counter[str]  # unusable entries by kind, moved to the dead-letter stream
    nulled: int  # history elements of another type than the rest of their list, written as null
    erased: int = 0  # stream records of erased users, dropped (contracts.erasure)
    rewritten: int = 0  # rows of erased users removed from files exported before
    expired: int = 0  # files past the retention, removed

    def describe(self, out: Path, dead_letters: str) -> str:
        line = (
            f"exported {self.impressions} impressions of {self.answers} answers to {out}; "
            f"{self.waiting} answers wait out the label window"
        )
        if self.waiting and not self.answers:
            line += " (--label-window-seconds 0 labels them with the clicks already in)"
        if self.set_aside:
            kinds = ", ".join(f"{k}: {n}" for k, n in sorted(self.set_aside.items()))
            n = self.set_aside.total()
            line += f"; set aside {n} unusable records ({kinds}) in the stream {dead_letters}"
        if self.nulled:
            line += f"; {self.nulled} history ids of another type than the rest of their list are null"
        if self.erased or self.rewritten:
            line += (
                f"; dropped {self.erased} records of erased users from the streams and "
                f"{self.rewritten} rows from earlier files"
            )
        if self.expired:
            line += f"; removed {self.expired} files past the retention"
        return line


def id_seconds(entry_id: str) -> float:
    return int(entry_id.split("-")[0]) / 1000


def id_key(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


Entry = tuple[str, str, dict[str, Any]]  # stream key, entry id, record


@dataclass(frozen=True)
class Unusable:
    """A stream entry the exporter cannot use, and why: it goes to the dead-letter stream."""

    key: str
    entry_id: str
    raw: bytes
    kind: str  # not_json, unknown_schema, bad_record
    reason: str


@dataclass
class Pending:
    """Stream entries delivered to this consumer and not yet acknowledged: the impressions in time
    order (by id time, then key, then id), so each key's entries stay in id order."""

    impressions: list[Entry] = field(default_factory=list)
    clicks: list[Entry] = field(default_factory=list)
    unusable: list[Unusable] = field(default_factory=list)


def decode_entry(
    key: str, entry_id: str, fields: dict[bytes, bytes], problem: Callable[[dict[str, Any]], str | None]
) -> dict[str, Any] | Unusable:
    """An entry's record, checked by ``problem``; or why it cannot be used."""
    raw = fields.get(b"r", b"")
    try:
        record = decode_feedback(raw)
    except orjson.JSONDecodeError:
        return Unusable(key, entry_id, raw, "not_json", "the record is not JSON")
    except ValueError as e:
        return Unusable(key, entry_id, raw, "unknown_schema", str(e))
    except (KeyError, TypeError, AttributeError) as e:  # a schema 1 record whose items are malformed
        return Unusable(key, entry_id, raw, "bad_record", f"malformed items: {e!r}")
    reason = problem(record)
    return record if reason is None else Unusable(key, entry_id, raw, "bad_record", reason)


def _order(entry: Entry) -> tuple[int, str, int]:
    ms, seq = id_key(entry[1])
    return ms, entry[0], seq


class Exporter:
    def __init__(
        self,
        client: SyncClient,
        keys: Keys,
        out: Path,
        window_seconds: float,
        batch: int = BATCH_ANSWERS,
        keep_days: float | None = None,
    ):
        self.r, self.out, self.window, self.batch = client, out, window_seconds, batch
        self.keys, self.keep_days = keys, keep_days
        self.imp_keys, self.click_keys = keys.impressions(), keys.clicks()
        self.dead_letters, self.dead_letter_counts = keys.dead_letters(), keys.dead_letter_counts()
        self.trimmed = 0
        out.mkdir(parents=True, exist_ok=True)
        (out / COMMITS).touch()  # an export folder from the start: training on it says it is empty
        for key in (*self.imp_keys, *self.click_keys):
            try:
                self.r.xgroup_create(key, GROUP, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    # --- reading -------------------------------------------------------------------------------
    def _read(self, key: str, start: str) -> Iterator[tuple[str, dict[bytes, bytes]]]:
        """Every entry of ``key`` for this consumer: its pending list (start "0") or new ones (">")."""
        last = start
        while True:
            reply: Any = self.r.xreadgroup(GROUP, CONSUMER, {key: last}, count=READ_COUNT)
            entries = [(i.decode(), f) for i, f in (reply[0][1] if reply else [])]
            if not entries:
                return
            # An entry the stream's MAXLEN trimmed before it was exported comes back empty: gone.
            gone = [i for i, f in entries if not f]
            if gone:
                self.r.xack(key, GROUP, *gone)
                self.trimmed += len(gone)
            yield from ((i, f) for i, f in entries if f)
            if start == "0":
                last = entries[-1][0]

    def read_all(self) -> Pending:
        p = Pending()
        for start in ("0", ">"):
            for keys, into, problem in (
                (self.imp_keys, p.impressions, impression_problem),
                (self.click_keys, p.clicks, click_problem),
            ):
                for key in keys:
                    for i, f in self._read(key, start):
                        record = decode_entry(key, i, f, problem)
                        if isinstance(record, Unusable):
                            p.unusable.append(record)
                        else:
                            into.append((key, i, record))
        p.impressions.sort(key=_order)
        return p

    def set_aside(self, unusable: list[Unusable]) -> Counter[str]:
        """Each unusable entry to the dead-letter stream with its reason, counted by kind, then
        acknowledged: one odd record never stops the export, and none is lost without a trace."""
        kinds: Counter[str] = Counter()
        for u in unusable:
            fields = {"stream": u.key, "id": u.entry_id, "kind": u.kind, "reason": u.reason, "r": u.raw}
            self.r.xadd(self.dead_letters, fields, maxlen=DEAD_LETTERS_KEPT, approximate=True)  # type: ignore[arg-type]
            self.r.hincrby(self.dead_letter_counts, u.kind, 1)
            self.r.xack(u.key, GROUP, u.entry_id)
            kinds[u.kind] += 1
        return kinds

    def ack(self, entries: list[Entry]) -> None:
        by_key: dict[str, list[str]] = defaultdict(list)
        for key, entry_id, _ in entries:
            by_key[key].append(entry_id)
        for key, ids in by_key.items():
            self.r.xack(key, GROUP, *ids)

    # --- committing ------------------------------------------------------------------------------
    def watermark(self) -> dict[str, str]:
        """Per impression stream key, the last entry id committed ("0-0" before any). A commit of
        the single-key layout holds one id."""
        batches = read_commits(self.out)
        last = batches[-1]["last"] if batches else {}
        if isinstance(last, str):
            last = {self.imp_keys[0]: last}
        return {key: last.get(key, "0-0") for key in self.imp_keys}

    def clean_uncommitted(self) -> None:
        committed = {name for batch in read_commits(self.out) for name in batch["files"]}
        for f in self.out.glob("*/*part-*"):
            if f.relative_to(self.out).as_posix() not in committed:
                f.unlink()

    def drop_erased(self, pending: Pending, tombstones: set[str]) -> int:
        """Erased users' records out of ``pending``, acknowledged and deleted from the streams."""
        if not tombstones:
            return 0
        dropped = []
        for entries in (pending.impressions, pending.clicks):
            gone = [e for e in entries if tombstone(e[2]["user_id"]) in tombstones]
            if gone:
                entries[:] = [e for e in entries if tombstone(e[2]["user_id"]) not in tombstones]
                dropped += gone
        self.ack(dropped)
        for key, entry_id, _ in dropped:
            self.r.xdel(key, entry_id)
        return len(dropped)

    def export(self, now: float | None = None) -> Summary:
        """One pass, holding the folder's lock: everything ripe is written and acknowledged, erased
        users are dropped and removed from earlier files, files past the retention removed."""
        with locked(self.out):
            return self._export(time.time() if now is None else now)

    def _export(self, now: float) -> Summary:
        self.clean_uncommitted()
        mark = self.watermark()
        tombstones = erased_users(self.r, self.keys)
        pending = self.read_all()
        set_aside = self.set_aside(pending.unusable)
        erased = self.drop_erased(pending, tombstones)

        def exported(entry: Entry) -> bool:
            return id_key(entry[1]) <= id_key(mark[entry[0]])

        self.ack([e for e in pending.impressions if exported(e)])  # written by a run that stopped
        todo = [e for e in pending.impressions if not exported(e)]
        # Ids grow with time, so the ripe answers are a prefix of each key's unexported ones.
        n_ripe = next((k for k, e in enumerate(todo) if id_seconds(e[1]) + self.window > now), len(todo))
        answers = [(entry_id, rec) for _, entry_id, rec in todo]
        clicked = attribute(answers, [(i, c) for _, i, c in pending.clicks], self.window)
        reused: set[tuple[Any, str]] = set()
        exported_rows = nulled = 0
        for s in range(0, n_ripe, self.batch):
            e = min(s + self.batch, n_ripe)
            rows = sample_rows(answers, s, e, clicked, reused)
            for key, entry_id, _ in todo[s:e]:
                mark[key] = entry_id
            files, n = self.write(rows, f"{len(read_commits(self.out)):06d}-{todo[e - 1][1]}")
            nulled += n
            self.commit(mark, files, len(rows))
            self.ack(todo[s:e])
            exported_rows += len(rows)
        # A click can still belong to an impression not yet exported only if it is younger than
        # the oldest unexported impression's time plus the window and the flush slack.
        left = [id_seconds(entry_id) for _, entry_id, _ in todo[n_ripe:]]
        horizon = (min(left) if left else now - self.window) - FLUSH_SLACK_SECONDS
        self.ack([c for c in pending.clicks if c[2]["at"] < horizon])
        rewritten = apply_tombstones(self.out, tombstones)["rows_removed"] if tombstones else 0
        expired = expire(self.out, now - self.keep_days * 86400) if self.keep_days is not None else 0
        return Summary(
            exported_rows, n_ripe, len(todo) - n_ripe, set_aside, nulled, erased, rewritten, expired
        )

    def write(self, rows: list[dict[str, Any]], name: str) -> tuple[list[str], int]:
        """The rows as Parquet, a folder per hour; the file names, and the history elements of
        another type than their list's that were written as null (``jobs.records``)."""
        by_hour: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_hour[time.strftime("%Y-%m-%dT%H", time.gmtime(row["ts"]))].append(row)
        names, nulled = [], 0
        for hour, hour_rows in sorted(by_hour.items()):
            tables, n = typed_tables(hour_rows)
            nulled += n
            for k, table in enumerate(tables):
                # Not "hour=…": readers would take it for a hive partition and add an "hour" column.
                path = f"{hour}/part-{name}{f'-{k}' if k else ''}.parquet"
                final = self.out / path
                final.parent.mkdir(parents=True, exist_ok=True)
                tmp = final.with_name(f".{final.name}.tmp")
                pq.write_table(table, tmp)
                fsync(tmp)
                os.replace(tmp, final)
                fsync(final.parent)
                names.append(path)
        return names, nulled

    def written_to(self) -> bool:
        """Whether the service ever wrote an impression under these keys (a wrong prefix or
        database exports nothing, which the command says)."""
        return any(self.r.xinfo_stream(key).get("entries-added", 0) for key in self.imp_keys)

    def commit(self, last: dict[str, str], files: list[str], rows: int) -> None:
        line = json.dumps({"last": last, "files": files, "rows": rows, "at": time.time()})
        with open(self.out / COMMITS, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        fsync(self.out)


def expire(out: Path, cutoff: float) -> int:
    """Removes the hour folders that ended before ``cutoff`` (epoch seconds): their files leave the
    commit log first (its lines stay, they hold the watermark), then the disk. How many files."""
    old = set()
    for folder in out.iterdir():
        try:
            start = calendar.timegm(time.strptime(folder.name, "%Y-%m-%dT%H"))
        except ValueError:
            continue  # not an hour folder
        if folder.is_dir() and start + 3600 <= cutoff:
            old.add(folder.name)
    if not old:
        return 0
    batches = read_commits(out)
    gone = [n for b in batches for n in b["files"] if n.split("/", 1)[0] in old]
    for batch in batches:
        leaving = [n for n in batch["files"] if n.split("/", 1)[0] in old]
        batch["rows"] -= sum(pq.read_metadata(out / n).num_rows for n in leaving if (out / n).exists())
        batch["files"] = [n for n in batch["files"] if n not in leaving]
    write_commits(out, batches)
    for name in old:
        shutil.rmtree(out / name, ignore_errors=True)
    return len(gone)


def attribute(
    unexported: list[tuple[str, dict[str, Any]]], clicks: list[tuple[str, dict[str, Any]]], window: float
) -> set[tuple[int, int]]:
    """(answer, item) positions in ``unexported`` that a click is attributed to. Every unexported
    answer is a candidate, so a click goes to the right one even when that one is not ripe yet."""
    by_request: dict[tuple[Any, str], tuple[int, int]] = {}
    by_user_item: dict[tuple[str, str], list[tuple[float, int, int]]] = defaultdict(list)
    for a, (_, rec) in enumerate(unexported):
        for j, cand in enumerate(rec["candidates"]):
            by_request.setdefault((rec["request_id"], _json(cand.get("item_id"))), (a, j))
            key = (_json(rec["user_id"]), _json(cand.get("item_id")))
            by_user_item[key].append((rec["ts"], a, j))
    clicked: set[tuple[int, int]] = set()
    for _, c in clicks:
        item = _json(c["item_id"])
        hit = by_request.get((c["request_id"], item)) if c.get("request_id") else None
        if hit is None:
            shown = by_user_item.get((_json(c["user_id"]), item), ())
            seen = [s for s in shown if 0 <= c["at"] - s[0] <= window]
            hit = max(seen)[1:] if seen else None
        if hit is not None:
            clicked.add(hit)
    return clicked


def sample_rows(
    answers: list[tuple[str, dict[str, Any]]],
    start: int,
    end: int,
    clicked: set[tuple[int, int]],
    reused: set[tuple[Any, str]],
) -> list[dict[str, Any]]:
    """The sample rows of answers[start:end], one per impression, labelled by ``clicked``."""
    rows = []
    for a in range(start, end):
        rec = answers[a][1]
        fields = rec["fields"]
        hist = {f"hist_{f}": [b.get(f) for b in rec["history"]] for f in fields}
        propensity, explored = rec.get("propensity"), rec.get("explored")
        for j, cand in enumerate(rec["candidates"]):
            key = (rec["request_id"], _json(cand.get("item_id")))
            if key in reused:  # a request id a client reused: the first answer's impression
                continue
            reused.add(key)
            rows.append(
                {
                    **{f: cand.get(f) for f in fields},
                    **hist,
                    **rec["profile"],
                    **rec["context"],
                    # after the features, so no feature name can overwrite how it was served
                    "label": int((a, j) in clicked),
                    "user_id": rec["user_id"],
                    "ts": rec["ts"],
                    "request_id": rec["request_id"],
                    "model_version": rec["model_version"],
                    "key_id": rec.get("key_id"),
                    "served_ctr": rec["ctr"][j],
                    "rank": j + 1,
                    "degraded": rec["degraded"],
                    "propensity": propensity[j] if propensity is not None else 1.0,
                    "explored": explored[j] if explored is not None else False,
                }
            )
    return rows


def _json(v: Any) -> str:
    return json.dumps(v)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m jobs.feedback", description=__doc__.split("\n\n")[0])
    env = tools()
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="impressions and clicks -> labelled Parquet samples")
    e.add_argument("--redis-url", default=env.redis_url, help="default $DIN_REDIS_URL, as the service")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--key-prefix", default=env.key_prefix, help="default $DIN_KEY_PREFIX, as the service")
    e.add_argument(
        "--label-window-seconds",
        type=float,
        default=DEFAULT_WINDOW_SECONDS,
        help="an impression is written once this much older than now, so its clicks can arrive first "
        "(0: label it with the clicks already in)",
    )
    e.add_argument("--batch", type=int, default=BATCH_ANSWERS, help="answers per committed batch")
    e.add_argument(
        "--keep-days",
        type=float,
        default=env.export_keep_days,
        help="remove exported hours older than this many days (default $DIN_EXPORT_KEEP_DAYS; "
        "unset: keep all)",
    )
    e.add_argument("--follow", action="store_true", help="keep exporting every --every seconds")
    e.add_argument("--every", type=float, default=60.0)
    a = p.parse_args(argv)
    if a.label_window_seconds < 0:
        p.error("--label-window-seconds must be >= 0")
    if a.batch < 1:
        p.error("--batch must be >= 1")
    if a.keep_days is not None and a.keep_days <= 0:
        p.error("--keep-days must be > 0")
    try:
        client, keys = sync_client(a.redis_url), keys_for(a.redis_url, a.key_prefix)
    except ValueError as e:
        p.error(f"--redis-url / --key-prefix: {e}")
    try:
        exporter = Exporter(client, keys, a.out, a.label_window_seconds, a.batch, a.keep_days)
        while True:
            summary = exporter.export()
            print(summary.describe(a.out, keys.dead_letters()), flush=True)
            if not summary.answers and not summary.waiting and not exporter.written_to():
                print(
                    f"no /score answer was ever logged under the prefix {a.key_prefix!r} at {a.redis_url}: "
                    "is that where the service writes (DIN_REDIS_URL, DIN_KEY_PREFIX)?",
                    file=sys.stderr,
                )
            if not a.follow:
                return 0
            time.sleep(a.every)
    except (RedisError, OSError) as e:
        print(f"export failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
