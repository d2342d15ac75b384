"""Settings of the Streamlit dashboard: the ``[dashboard]`` section of :class:`linewatch.contracts.settings.Settings`
(kept beside it in its own module for its validators; read only through ``Settings``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator

# What a person may do at the dashboard, each role including the ones before it: a viewer looks; an operator also
# labels frames; an engineer also retrains, activates, rolls back and re-announces models.
Role = Literal["viewer", "operator", "engineer"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "engineer")


class AlarmSettings(BaseModel):
    """When the dashboard raises an alarm (``[dashboard.alarms]``; evaluated by ``linewatch.dashboard.alarms``)."""

    behind_after_s: float = Field(60.0, gt=0, description="inspection behind: the oldest unprocessed frame of a "
                                  "camera is older than this, seconds")
    heartbeat_stale_s: float = Field(10.0, ge=3, le=120, description="a worker whose heartbeat (every 2 s) is older "
                                     "than this is stalled, seconds")
    defect_rate_max: float = Field(0.2, gt=0, le=1, description="defect rate over which a line raises an alarm")
    defect_rate_max_by_line: dict[str, float] = Field({}, description="line_id -> its own defect-rate limit")
    defect_rate_window_s: float = Field(300.0, ge=60, description="processing-time window of the defect rate, s")
    defect_rate_min_frames: int = Field(20, ge=1, description="fewest frames in the window to judge a defect rate")
    period_s: float = Field(2.0, ge=0.5, le=60, description="how often the alarms are evaluated, seconds")

    @field_validator("defect_rate_max_by_line")
    @classmethod
    def _rates(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {line: rate for line, rate in value.items() if not 0 < rate <= 1}
        if bad:
            raise ValueError(f"defect-rate limits must be in (0, 1]: {bad}")
        return value

    def defect_rate_limit(self, line_id: str) -> float:
        """The defect-rate limit of ``line_id``: its own, else :attr:`defect_rate_max`."""
        return self.defect_rate_max_by_line.get(line_id, self.defect_rate_max)


class DashboardSettings(BaseModel):
    """The Streamlit dashboard."""

    port: int = Field(8501, ge=1, le=65535)
    refresh_s: float = Field(2.0, ge=0.5, description="live page refresh period, seconds")
    accounts_file: Path | None = Field(
        None, description="TOML file of operators and their password hashes; set = labelling needs a login"
    )
    oidc: bool = Field(False, description="use Streamlit's built-in OIDC login (configured in .streamlit/secrets.toml)")
    page_size: int = Field(24, ge=1, le=500, description="frames per page in galleries and the review queue")
    address: str = Field("0.0.0.0", description="interface the dashboard listens on")
    oidc_provider: str | None = Field(None, description="named provider in secrets.toml [auth.<name>]; none = [auth]")
    oidc_roles: dict[str, Role] = Field(
        {}, description="OIDC: an email address or a group (from the identity token's oidc_groups_claim) -> role; "
        "a person matching several gets the highest; matched case-insensitively")
    oidc_groups_claim: str = Field("groups", description="OIDC: the identity token claim that lists the groups")
    oidc_default_role: Role = Field(
        "viewer", description="OIDC: the role of a signed-in person matching no oidc_roles entry (viewer: signing "
        "in with the company identity provider lets anyone look, and only the people mapped label)")
    session_hours: float = Field(
        12.0, gt=0, le=24 * 14, description="accounts mode: how long a sign-in lasts (the signed cookie's age), "
        "hours")
    cookie_secret: SecretStr | None = Field(
        None, description="accounts mode: the key that signs the sign-in cookie (at least 32 characters; e.g. a "
        "secret file dashboard__cookie_secret); none = a random key kept beside the accounts file")
    query_timeout_s: float = Field(5.0, gt=0, description="longest a dashboard SQL query may run, seconds")
    timezone: str = Field("UTC", description="IANA time zone for times shown and for shift boundaries")
    shift_starts: list[str] = Field(["06:00", "14:00", "22:00"], min_length=1,
                                    description="local times (HH:MM) at which shifts start")
    metrics_port: int | None = Field(None, description="Prometheus /metrics, /healthz, /readyz port; none = off")
    alarms: AlarmSettings = AlarmSettings()
    review_band: tuple[float, float] = Field(
        (0.8, 1.25), description="normalised scores (x threshold) in [low, high] are uncertain: kept frames scored "
        "there are queued for review (low <= 1 <= high)")
    review_sample_every: int = Field(
        20, ge=0, description="of the confident kept frames (scored outside review_band), one in N (by inspection "
        "id) is queued too, to check the model's confident verdicts; 0 = none")
    review_claim_s: float = Field(
        300.0, ge=10, description="how long frames shown on the Review page stay reserved to the operator who "
        "opened them, seconds (renewed on each view)")
    review_min_view_s: float = Field(
        0.5, ge=0, le=5, description="a click labels a frame only once it has been in that place on screen this "
        "long, seconds: a double click never labels the frame that replaced the one clicked")

    @field_validator("cookie_secret")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("cookie_secret needs at least 32 characters (e.g. `openssl rand -hex 32`)")
        return value

    @field_validator("review_band")
    @classmethod
    def _band_around_threshold(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= 1 <= high:
            raise ValueError(f"review_band {list(value)} must satisfy 0 < low <= 1 <= high (1 = the threshold)")
        return value

    @field_validator("shift_starts")
    @classmethod
    def _shift_times(cls, value: list[str]) -> list[str]:
        for item in value:
            hours, _, minutes = item.partition(":")
            if not (hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60):
                raise ValueError(f"shift start {item!r} is not HH:MM")
        return sorted(value, key=lambda t: (int(t.split(":")[0]), int(t.split(":")[1])))

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value
