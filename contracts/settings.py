"""The settings the service and the commands beside it share, read from ``DIN_*`` variables.

``Shared`` holds what both sides must agree on: where the models are, which Redis and key prefix the
behaviours and logs live under, how long a history is, the admin token. The service's ``Settings``
(``service.settings``) adds its own; ``Tools`` adds what only the commands read. So exported once,
the variables send the service, the export, experiments, redeploy and the bulk loader to the same
place, and a default is written once. ``scripts/docs_config.py`` writes both tables of
docs/configuration.md from these classes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.redis_client import check_url, keys_for


class Shared(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIN_", extra="ignore")

    models: Path = Field(
        Path("models"),
        description="model repository; the service serves the version its `current` pointer names",
    )
    admin_token: SecretStr | None = Field(
        None, description="bearer token for `/admin/*` (16+ characters); unset disables them"
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="behaviour store: one server, or a Redis Cluster as `redis+cluster://host:port[,host:port…]`",
    )
    key_prefix: str = Field("din:", description="prefix of every Redis key (no `{` or `}` on a cluster)")
    history_cap: int = Field(100, ge=1, le=10_000, description="behaviours kept per user")
    history_ttl_seconds: int = Field(90 * 24 * 3600, ge=0, description="idle users expire; 0 = never")

    @field_validator("admin_token", mode="before")
    @classmethod
    def empty_means_unset(cls, v: object) -> object:
        return None if v == "" else v  # compose passes ${VAR:-} as an empty string

    @field_validator("redis_url")
    @classmethod
    def redis_url_is_one(cls, v: str) -> str:
        return check_url(v)

    @model_validator(mode="after")
    def check_shared(self) -> Shared:
        """Only what the values themselves say (settings do no I/O)."""
        keys_for(self.redis_url, self.key_prefix)  # a prefix a cluster cannot take
        if self.admin_token is not None and len(self.admin_token.get_secret_value()) < 16:
            raise ValueError("DIN_ADMIN_TOKEN must be at least 16 characters")
        return self


class Tools(Shared):
    """What the commands read besides the shared settings."""

    instances: str = Field(
        "",
        description="comma-separated base URLs of the API instances `scripts/redeploy.py` and "
        "`scripts/experiment.py` reload and verify (`--instance`, repeatable, adds to them)",
    )
    export_cache: str | None = Field(
        None,
        description="where traced serving graphs are kept per architecture, so a retrain's export swaps "
        "its weights into one (unset: `~/.cache/din-serve/onnx`; empty: none)",
    )

    export_keep_days: float | None = Field(
        None,
        gt=0,
        description="`python -m jobs.feedback export` removes exported hours older than this many days "
        "(`--keep-days`); unset keeps them all",
    )

    @field_validator("export_keep_days", mode="before")
    @classmethod
    def empty_keep_means_unset(cls, v: object) -> object:
        return None if v == "" else v

    @property
    def instance_urls(self) -> list[str]:
        return [u.strip().rstrip("/") for u in self.instances.split(",") if u.strip()]


def tools() -> Tools:
    """The commands' settings; a bad variable ends the command with one line that names it."""
    try:
        return Tools()
    except ValidationError as e:
        problems = "; ".join(
            f"DIN_{'_'.join(map(str, err['loc'])).upper()}: {err['msg']}" for err in e.errors()
        )
        sys.exit(f"bad environment: {problems}")
