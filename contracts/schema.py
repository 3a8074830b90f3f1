"""DIN's four feature groups and their vocabularies, in one declaration.

Every feature is a categorical id. A vocabulary maps raw ids (ints or strings, exactly as they
appear in logs and in Redis) to dense indices: 0 is padding, 1 is unknown, 2.. are the ids seen in
training. The mapping is a vectorised ``searchsorted`` over the sorted raw ids, so it needs only
numpy: the service uses this module without torch.

Behaviour fields and candidate fields are the same features (an item id is an item id whether it
was clicked earlier or is being scored now), so they share one vocabulary and one embedding table.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PAD = 0
OOV = 1
N_RESERVED = 2
# A feature value that is missing (a profile field the request and Redis did not have). Never an
# id of a log, so unless training saw it often enough to learn it, it maps to OOV.
MISSING_INT = np.iinfo(np.int64).min
MISSING_STR = "\x00"
# The context features the sample layout knows, with the values they take (the UTC hour, the UTC
# weekday with Monday 0): training reads these columns as context, and /score refuses an integer
# outside its range instead of scoring it as an unknown id.
CONTEXT_RANGES: dict[str, tuple[int, int]] = {"hour": (0, 23), "weekday": (0, 6)}


def current_context(now: float | None = None) -> dict[str, int]:
    """The context features' values at ``now`` (UTC): what the service scores a request with that
    sends no context, and what the gate scores the live sample with."""
    t = time.gmtime(now if now is not None else time.time())
    return {"hour": t.tm_hour, "weekday": t.tm_wday}


@dataclass(frozen=True)
class FeatureSchema:
    """Names of the features in each group. Any group may be empty."""

    profile: tuple[str, ...] = ()  # per user, e.g. age, gender, occupation
    behavior: tuple[str, ...] = ("item_id", "category_id")  # per behaviour AND per candidate ad
    context: tuple[str, ...] = ()  # per impression, e.g. hour, weekday

    def __post_init__(self) -> None:
        if not self.behavior:
            raise ValueError("schema.behavior must name at least one field (the candidate's id)")
        names = [*self.profile, *self.behavior, *self.context]
        if len(set(names)) != len(names):
            raise ValueError(f"feature names must be unique across groups, got {names}")

    @property
    def all_features(self) -> tuple[str, ...]:
        return (*self.profile, *self.behavior, *self.context)

    def to_dict(self) -> dict[str, list[str]]:
        return {"profile": list(self.profile), "behavior": list(self.behavior), "context": list(self.context)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSchema:
        return cls(tuple(d.get("profile", ())), tuple(d["behavior"]), tuple(d.get("context", ())))


@dataclass(frozen=True)
class SchemaFit:
    """How the features of some data fit a model's: what the model takes that the data lacks (it is
    scored as missing there) and what the data has that the model does not take (ignored)."""

    lacking: tuple[str, ...]
    ignored: tuple[str, ...]
    lacking_behavior: tuple[str, ...]  # of ``lacking``: behaviour fields, every history's too

    @classmethod
    def of(cls, model: FeatureSchema, data: FeatureSchema) -> SchemaFit:
        have, want = set(data.all_features), set(model.all_features)
        return cls(
            tuple(n for n in model.all_features if n not in have),
            tuple(n for n in data.all_features if n not in want),
            tuple(n for n in model.behavior if n not in data.behavior),
        )

    @property
    def exact(self) -> bool:
        return not self.lacking and not self.ignored


@dataclass
class Vocab:
    """Raw id -> index. ``keys`` is sorted; ``counts[i]`` is the training frequency of index i."""

    keys: np.ndarray  # [V-2] sorted unique raw ids, int64 or str
    counts: np.ndarray = field(repr=False)  # [V] int64, counts[PAD] = counts[OOV] = 0

    @classmethod
    def build(cls, values: np.ndarray, min_count: int = 1) -> Vocab:
        """Builds from every raw occurrence in the training data (so counts are n_j of the paper)."""
        values = _normalise(values)
        keys, counts = np.unique(values, return_counts=True)
        keep = counts >= min_count
        keys, counts = keys[keep], counts[keep]
        return cls(keys=keys, counts=np.concatenate([[0, 0], counts]).astype(np.int64))

    @staticmethod
    def normalised(values: np.ndarray) -> np.ndarray:
        """Raw ids as ``build`` counts them."""
        return _normalise(values)

    def __len__(self) -> int:
        return len(self.keys) + N_RESERVED

    @property
    def is_string(self) -> bool:
        return self.keys.dtype.kind in "US"

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """Vectorised lookup; unknown ids (and ids of the wrong type) map to OOV. Shape is kept."""
        raw = np.asarray(raw)
        if raw.size == 0:
            return np.zeros(raw.shape, dtype=np.int64)
        if self.is_string != (raw.dtype.kind in "USO"):
            raw = raw.astype(str) if self.is_string else _to_int_or_none(raw)
        raw = _normalise(raw)
        if len(self.keys) == 0:
            return np.full(raw.shape, OOV, dtype=np.int64)
        pos = np.searchsorted(self.keys, raw)
        pos_clipped = np.minimum(pos, len(self.keys) - 1)
        hit = self.keys[pos_clipped] == raw
        return np.where(hit, pos_clipped + N_RESERVED, OOV).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dtype": "str" if self.is_string else "int",
            "keys": self.keys.tolist(),
            "counts": self.counts.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vocab:
        dtype = np.str_ if d["dtype"] == "str" else np.int64
        keys = np.asarray(d["keys"], dtype=dtype)
        if d["dtype"] == "str" and len(keys) == 0:
            keys = np.asarray([], dtype="<U1")
        return cls(keys=keys, counts=np.asarray(d["counts"], dtype=np.int64))


def _normalise(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind in "OS":
        return values.astype(str)
    if values.dtype.kind in "iub":
        return values.astype(np.int64)
    if values.dtype.kind == "U":
        return values
    raise TypeError(f"feature ids must be integers or strings, got dtype {values.dtype}")


def _to_int_or_none(raw: np.ndarray) -> np.ndarray:
    """Strings sent for an integer feature: numeric ones are parsed, the rest become -1 (never a key)."""
    out = np.full(raw.size, -1, dtype=np.int64)
    for i, v in enumerate(raw.reshape(-1)):  # only reached on mistyped input, never on the hot path
        with contextlib.suppress(TypeError, ValueError):
            out[i] = int(v)
    return out.reshape(raw.shape)


@dataclass
class FeatureSpace:
    """A schema plus one vocabulary per embedding table. Saved inside every checkpoint."""

    schema: FeatureSchema
    vocabs: dict[str, Vocab]  # keyed by feature name; behaviour fields double as candidate fields

    @classmethod
    def build(cls, schema: FeatureSchema, columns: dict[str, np.ndarray], min_count: int = 1) -> FeatureSpace:
        """``columns[name]`` holds every training occurrence of that feature (behaviours included)."""
        missing = [n for n in schema.all_features if n not in columns]
        if missing:
            raise ValueError(f"training data has no column for features {missing}")
        return cls(schema, {n: Vocab.build(columns[n], min_count) for n in schema.all_features})

    def extended(self, columns: dict[str, np.ndarray]) -> FeatureSpace:
        """This space with every id of ``columns`` (new training data) added: a warm start keeps
        each known id's embedding row and gives new ids fresh ones. Counts are the new data's."""
        vocabs = {}
        for name, old in self.vocabs.items():
            new = Vocab.build(columns[name])
            if old.is_string != new.is_string and len(new.keys) and len(old.keys):
                raise ValueError(f"feature {name}: the new data's ids are of another type than before")
            keys = np.union1d(old.keys, new.keys) if len(new.keys) else old.keys
            counts = np.zeros(len(keys) + N_RESERVED, dtype=np.int64)
            if len(new.keys):
                counts[np.searchsorted(keys, new.keys) + N_RESERVED] = new.counts[N_RESERVED:]
            vocabs[name] = Vocab(keys=keys, counts=counts)
        return FeatureSpace(self.schema, vocabs)

    def sizes(self) -> dict[str, int]:
        return {n: len(v) for n, v in self.vocabs.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema.to_dict(), "vocabs": {n: v.to_dict() for n, v in self.vocabs.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpace:
        schema = FeatureSchema.from_dict(d["schema"])
        return cls(schema, {n: Vocab.from_dict(v) for n, v in d["vocabs"].items()})
