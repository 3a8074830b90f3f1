"""All service settings in one class, read from DIN_* environment variables, checked at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.bundle import MANIFEST_FILE
from model.repository import ModelRepository, RepositoryError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIN_", extra="ignore")

    models: Path = Path("models")  # the model repository; the service serves its `current` version
    seed_bundle: Path | None = None  # published as the first version when the repository is empty
    model_poll_seconds: float = Field(1.0, ge=0)  # re-read `current` this often; 0 = only /admin/reload
    admin_token: SecretStr | None = None  # bearer token for /admin/*; unset = /admin/* disabled
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "din:"  # every key the service writes starts with this
    history_cap: int = Field(100, ge=1, le=10_000)  # behaviours kept per user (the newest)
    history_ttl_seconds: int = Field(90 * 24 * 3600, ge=0)  # idle users expire; 0 = never
    redis_timeout_ms: float = Field(50, gt=0)  # per Redis call on the scoring path
    redis_write_timeout_ms: float = Field(1000, gt=0)  # per write (/events, /profile); then 503
    redis_breaker_failures: int = Field(1, ge=1)  # consecutive Redis failures that open the circuit
    redis_breaker_reset_seconds: float = Field(0.5, ge=0)  # open this long, then one trial call
    max_candidates: int = Field(1000, ge=1)
    max_events: int = Field(1000, ge=1)  # per POST /events
    max_body_bytes: int = Field(2_000_000, ge=1024)
    explain_top: int = Field(5, ge=1)  # behaviours listed per item with explain=true
    ort_intra_threads: int = Field(1, ge=0)  # onnxruntime threads per run (0 = all cores)
    inference_threads: int = Field(1, ge=1)  # runs in flight at once, off the event loop (see README)
    microbatch_wait_ms: float = Field(0, ge=0, le=50)  # > 0: requests arriving within this share a run
    microbatch_max_requests: int = Field(8, ge=1)  # requests per shared run
    max_queue_ms: float = Field(10, ge=0)  # 503 a /score request expected to wait longer; 0 = never
    max_in_flight: int = Field(64, ge=1)  # hard cap on /score requests in flight per process
    deadline_ms: float = Field(0, ge=0)  # drop a /score request not started within this; 0 = none
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    shutdown_drain_seconds: float = Field(0, ge=0)  # on SIGTERM, serve (not ready) this long first

    @field_validator("seed_bundle", "admin_token", mode="before")
    @classmethod
    def empty_means_unset(cls, v: object) -> object:
        return None if v == "" else v  # compose passes ${VAR:-} as an empty string

    @model_validator(mode="after")
    def a_model_must_be_servable(self) -> Settings:
        if self.seed_bundle is not None and not (self.seed_bundle / MANIFEST_FILE).is_file():
            raise ValueError(f"DIN_SEED_BUNDLE={self.seed_bundle} is not a model bundle (no {MANIFEST_FILE})")
        if self.seed_bundle is None:
            try:
                ModelRepository(self.models).current_path()
            except RepositoryError as e:
                raise ValueError(f"DIN_MODELS={self.models}: {e}") from e
        if self.admin_token is not None and len(self.admin_token.get_secret_value()) < 16:
            raise ValueError("DIN_ADMIN_TOKEN must be at least 16 characters")
        return self
