"""All service settings in one class, read from DIN_* environment variables, checked at start-up.

The fields the commands beside the service read too come from ``contracts.settings.Shared``. Each
field's description is a row of docs/configuration.md (scripts/docs_config.py writes it)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from contracts.api_keys import parse_entries
from contracts.settings import Shared


class Settings(Shared):
    seed_bundle: Path | None = Field(
        None,
        description="a bundle published as the first version when the repository is empty "
        "(the Docker image's demo model)",
    )
    model_poll_seconds: float = Field(
        1.0,
        ge=0,
        description="re-read the pointer this often and hot-swap when it moves; 0 = only on `/admin/reload`",
    )
    redis_timeout_ms: float = Field(50, gt=0, description="per Redis call on the scoring path (no retries)")
    redis_write_timeout_ms: float = Field(
        1000, gt=0, description="per write (`/events`, `/profile`); then 503, nothing written"
    )
    redis_breaker_failures: int = Field(
        1, ge=1, description="consecutive Redis failures that open the circuit breaker"
    )
    redis_breaker_reset_seconds: float = Field(
        0.5, ge=0, description="the circuit stays open this long, then one trial call"
    )
    max_candidates: int = Field(1000, ge=1, description="candidates per `/score` request")
    max_events: int = Field(1000, ge=1, description="events per `/events` request")
    max_body_bytes: int = Field(2_000_000, ge=1024, description="request body size; larger is 413")
    explain_top: int = Field(5, ge=1, description="behaviours listed per item with `explain`")
    ort_intra_threads: int = Field(1, ge=0, description="onnxruntime threads per run")
    inference_threads: int = Field(
        1,
        ge=1,
        description="model runs in flight at once per worker (off the event loop; 1 leaves the other core "
        "to the event loop)",
    )
    microbatch_wait_ms: float = Field(
        0, ge=0, le=50, description="> 0: requests arriving within this window share one model run"
    )
    microbatch_max_requests: int = Field(8, ge=1, description="requests per shared run")
    max_queue_ms: float = Field(
        10,
        ge=0,
        description="a `/score` request expected to wait longer than this behind the ones in flight gets "
        "503 + `Retry-After`; 0 = off",
    )
    max_in_flight: int = Field(64, ge=1, description="hard cap on `/score` requests in flight per worker")
    deadline_ms: float = Field(
        0, ge=0, description="drop a `/score` request with 503 if it has not started scoring within this"
    )
    log_impressions: bool = Field(
        True,
        description="log every item `/score` returns, with the features as scored, to a Redis stream "
        "(off the request path; `python -m jobs.feedback export` turns it into training samples)",
    )
    impression_sample_rate: float = Field(1.0, ge=0, le=1, description="share of `/score` answers logged")
    impression_buffer: int = Field(
        10_000,
        ge=1,
        description="answers buffered per worker for the log; beyond it they are dropped, counted",
    )
    shadow_max_in_flight: int = Field(
        4, ge=1, description="per worker: answers a shadow canary re-scores at once; more are not shadowed"
    )
    impression_flush_ms: float = Field(100, gt=0, description="the log is written at least this often")
    impression_stream_maxlen: int = Field(
        1_000_000, ge=1, description="entries kept in the impression and click streams (approximate)"
    )
    explore_share: float = Field(
        0,
        ge=0,
        le=0.5,
        description="share of the slots of a `/score` answer (when it returns fewer items than it got) "
        "filled with a random candidate from outside the model's top k, marked `explored` and logged with "
        "its propensity",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="level of the service's own log lines"
    )
    shutdown_drain_seconds: float = Field(
        0, ge=0, description="on SIGTERM, answer `/readyz` 503 but keep serving this long, then shut down"
    )

    api_keys: SecretStr | None = Field(
        None,
        description="API key entries, `<id> <scopes> <sha256>` separated by `;` "
        "(`python -m jobs.api_keys new`); with keys (here or in the file), `/score`, `/events` and "
        "`/profile` need one",
    )
    api_keys_file: Path | None = Field(
        None,
        description="a file of API key entries, one per line; re-read within a second of a change "
        "(rotation without a restart)",
    )
    allow_unauthenticated: bool = Field(
        False,
        description="serve without API keys on a non-loopback interface (behind a gateway that "
        "authenticates); without it, such a start is refused",
    )
    write_rate: float = Field(
        1000, gt=0, description="events per second one key may write (`/events`, `/profile`); then 429"
    )
    write_burst: int = Field(2000, ge=1, description="events one key may write at once, above the rate")

    @field_validator("api_keys", "api_keys_file", mode="before")
    @classmethod
    def empty_keys_mean_unset(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("api_keys")
    @classmethod
    def keys_parse(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            parse_entries(v.get_secret_value())
        return v

    @field_validator("seed_bundle", mode="before")
    @classmethod
    def empty_seed_means_unset(cls, v: object) -> object:
        return None if v == "" else v  # compose passes ${VAR:-} as an empty string
