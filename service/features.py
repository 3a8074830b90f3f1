"""Requests -> the serving graph's feeds, for one loaded model: the one place a feature value is
checked and turned into an index.

A feature's rule (``FeatureRule``) comes from the model's vocabulary: an integer feature takes
integers, a string feature strings, and ``hour`` and ``weekday`` their range
(``contracts.schema.CONTEXT_RANGES``); errors name the field. The published OpenAPI schema is made
from the same rules (``service.openapi``). Unknown ids are fine: they map to the OOV index through
each vocabulary's vectorised ``searchsorted`` (``contracts.schema.Vocab.encode``).

``Features.request`` checks a /score body and encodes its candidates before anything is read;
``Features.feeds`` then adds the user's history, profile and context as read from Redis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from contracts.feeds import Feeds, Inputs, one_request
from contracts.ids import INT_ID_SCHEMA, INT_MAX, INT_MIN, STR_ID_SCHEMA
from contracts.schema import CONTEXT_RANGES, MISSING_INT, MISSING_STR, PAD, FeatureSpace
from service.errors import InvalidInput
from service.payloads import ScoreRequest

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class FeatureRule:
    """What one feature of the loaded model takes."""

    name: str
    is_string: bool
    bounds: tuple[int, int] | None = None  # an integer context feature's range

    @classmethod
    def of(cls, space: FeatureSpace, name: str) -> FeatureRule:
        is_string = space.vocabs[name].is_string
        in_context = name in space.schema.context
        return cls(name, is_string, CONTEXT_RANGES.get(name) if in_context and not is_string else None)

    def check(self, value: Any, loc: Loc) -> None:
        if self.is_string:
            ok = isinstance(value, str)
        else:
            ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok:
            got = "a string" if isinstance(value, str) else "an integer"
            want = "a string" if self.is_string else "an integer"
            raise InvalidInput(f"{self.name} must be {want} for this model, not {got}", loc)
        if self.bounds is not None and not self.bounds[0] <= value <= self.bounds[1]:
            raise InvalidInput(f"{self.name} must be from {self.bounds[0]} to {self.bounds[1]}", loc)

    def json_schema(self) -> dict[str, Any]:
        if self.is_string:
            return dict(STR_ID_SCHEMA)
        if self.bounds is not None:
            return INT_ID_SCHEMA | {"minimum": self.bounds[0], "maximum": self.bounds[1]}
        return dict(INT_ID_SCHEMA)


@dataclass
class ScoreInput:
    """A /score body checked against the model: the candidates to score (exact duplicates once),
    their index rows [N, F], and the profile and context keys the model does not take."""

    rows: list[dict[str, Any]]
    encoded: np.ndarray  # [N, F] int64
    ignored: list[str]  # "user.<key>", "context.<key>"


class Features:
    """One loaded model's feature rules and vocabularies; built once per bundle load."""

    def __init__(self, space: FeatureSpace):
        self.space, self.schema = space, space.schema
        self.rules = {name: FeatureRule.of(space, name) for name in space.schema.all_features}

    # --- checks -----------------------------------------------------------------------------------
    def check_present(
        self, values: Mapping[str, Any], names: Sequence[str], loc: Loc, required: bool
    ) -> None:
        for name in names:
            if name not in values:
                if required:
                    raise InvalidInput(f"missing feature {name!r}", (*loc, name))
                continue
            self.rules[name].check(values[name], (*loc, name))

    def check_column(self, name: str, column: Sequence[Any], loc: Loc) -> None:
        """One required feature over many rows (``column[i]`` is row i's value, None if absent)."""
        want = str if self.rules[name].is_string else int
        if all(type(v) is want for v in column):
            return
        i = next(i for i, v in enumerate(column) if type(v) is not want)
        if column[i] is None:
            raise InvalidInput(f"missing feature {name!r}", (*loc, i, name))
        self.rules[name].check(column[i], (*loc, i, name))

    def check_known(self, values: Mapping[str, Any], names: Sequence[str], loc: Loc) -> list[str]:
        """Checks the keys that are among ``names`` (this model's profile or context features);
        returns the others. They are not an error: a client written for another version of the
        model keeps working when the model behind the endpoint changes, and learns what this one
        left out."""
        ignored = []
        for key, value in values.items():
            if key in names:
                self.rules[key].check(value, (*loc, key))
            else:
                ignored.append(key)
        return ignored

    def request(self, req: ScoreRequest, max_candidates: int) -> ScoreInput:
        """The body's candidates checked and encoded in one pass over each of the model's ad fields
        (a few hundred candidates are a hot path), its profile and context checked; before
        anything is read."""
        candidates = req.candidates
        if len(candidates) > max_candidates:
            raise InvalidInput(
                f"at most {max_candidates} candidates per request, got {len(candidates)}",
                ("body", "candidates"),
            )
        fields = self.schema.behavior
        columns = [[c.get(name) for c in candidates] for name in fields]
        for name, column in zip(fields, columns, strict=True):
            self.check_column(name, column, ("body", "candidates"))
        ignored = []
        if req.context is not None:
            ignored += [
                f"context.{k}"
                for k in self.check_known(req.context, self.schema.context, ("body", "context"))
            ]
        if req.user is not None:
            ignored += [
                f"user.{k}" for k in self.check_known(req.user, self.schema.profile, ("body", "user"))
            ]
        encoded = np.stack([self.encode_column(n, c) for n, c in zip(fields, columns, strict=True)], 1)
        first: dict[tuple[Any, ...], int] = {}
        for i, key in enumerate(zip(*columns, strict=True)):
            first.setdefault(key, i)
        if len(first) == len(candidates):
            return ScoreInput(candidates, encoded, ignored)
        keep = list(first.values())
        return ScoreInput([candidates[i] for i in keep], encoded[keep], ignored)

    # --- encoding ---------------------------------------------------------------------------------
    def encode_column(self, name: str, values: Sequence[Any]) -> np.ndarray:
        """Indices of one feature's values; a value of the wrong type or beyond 64 bits (one stored
        before the id rule existed) counts as missing, which maps to OOV."""
        vocab = self.space.vocabs[name]
        if vocab.is_string:
            raw = np.array([v if isinstance(v, str) else MISSING_STR for v in values], dtype=str)
        else:
            ints = [v if isinstance(v, int) else MISSING_INT for v in values]
            try:
                raw = np.array(ints, dtype=np.int64)
            except OverflowError:
                raw = np.array([v if INT_MIN <= v <= INT_MAX else MISSING_INT for v in ints], dtype=np.int64)
        return vocab.encode(raw)

    def encode_rows(self, rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> np.ndarray:
        """[len(rows), len(names)] indices."""
        if not names:
            return np.zeros((len(rows), 0), dtype=np.int64)
        return np.stack([self.encode_column(n, [r.get(n) for r in rows]) for n in names], axis=1)

    def feeds(
        self,
        history: Sequence[Mapping[str, Any]],
        profile: Mapping[str, Any],
        context: Mapping[str, Any],
        candidates: np.ndarray,
    ) -> Feeds:
        """Feeds for one request (R = 1); ``candidates`` are index rows [N, F] (``request``). The
        caller keeps the history within the model's max_history (the store reads no more)."""
        s = self.schema
        return one_request(
            self.encode_rows([profile], s.profile)[0],
            self.encode_rows([context], s.context)[0],
            self.encode_rows(history, s.behavior),
            candidates,
        )


def leave_one_out(feeds: Feeds, items: np.ndarray) -> Feeds:
    """R = L requests from one request's feeds: request j is the history without behaviour j, each
    scoring ``items`` (index rows [n, F]). Their CTRs against the full history's give each
    behaviour's influence on each item."""
    length = int(feeds.history_len[0])
    history = feeds.history[0, :length]
    without = np.stack([np.delete(history, j, axis=0) for j in range(length)])  # [L, L - 1, F]
    if length == 1:  # the graph's L is never 0: one padding slot, length 0
        without = np.full((1, 1, history.shape[1]), PAD, dtype=np.int64)
    n = len(items)
    return Inputs(
        np.repeat(feeds.profile, length, axis=0),
        np.repeat(feeds.context, length, axis=0),
        without,
        np.full(length, length - 1, dtype=np.int64),
        np.tile(items, (length, 1)),
        np.repeat(np.arange(length, dtype=np.int64), n),
    )
