"""All of linewatch's settings, read the same way by every service.

Sources, highest priority first:

1. values passed in code (``Settings(detector={"max_batch": 8})``) or by CLI options,
2. environment variables ``LINEWATCH_<SECTION>__<FIELD>`` (e.g. ``LINEWATCH_KAFKA__BOOTSTRAP_SERVERS``),
3. a TOML config file named by ``LINEWATCH_CONFIG`` (sections as tables: ``[kafka]``, ``[detector]`` ...),
4. secret files in ``LINEWATCH_SECRETS_DIR`` (e.g. ``/run/secrets``), one per setting, named
   ``<section>__<field>`` (``database__password``, ``redis__password``, ``kafka__sasl_password``),
5. the defaults below, which run everything embedded on one machine.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .files import path_of
from .trainer_settings import TrainerSettings

CONFIG_ENV = "LINEWATCH_CONFIG"
SECRETS_DIR_ENV = "LINEWATCH_SECRETS_DIR"

Device = Literal["auto", "cpu", "cuda"]


def _default_data_root() -> Path:
    """``../shared/data`` next to the working directory or next to this checkout (src/linewatch/contracts/ is
    three folders below it), whichever exists."""
    candidates = [Path.cwd() / ".." / "shared" / "data", Path(__file__).resolve().parents[3] / ".." / "shared" / "data"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return candidates[0]


class KafkaSettings(BaseModel):
    """Kafka connection and topic layout. An empty ``bootstrap_servers`` means: start the embedded broker."""

    bootstrap_servers: str = ""
    topic_prefix: str = "linewatch"
    frames_partitions: int = Field(6, ge=1)
    replication_factor: int = Field(1, ge=1)
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024 * 1024, description="largest frame accepted, bytes")
    # Client security, passed through unchanged to kafka-python (SASL and TLS for a plant's secured cluster).
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True
    session_timeout_ms: int = Field(10_000, ge=1000)
    heartbeat_interval_ms: int = Field(1_000, ge=100)
    max_poll_interval_ms: int = Field(300_000, ge=10_000)
    fetch_max_wait_ms: int = Field(
        500, ge=0, le=10_000,
        description="longest the broker may hold a fetch while no data waits, ms (Kafka's fetch.max.wait.ms). "
        "Apache Kafka answers as soon as a frame arrives, so its default suits it; the embedded tansu broker "
        "holds every fetch this long, so `linewatch up` sets 50 for it (halves latency, bench/README.md)")

    @property
    def frames_topic(self) -> str:
        return f"{self.topic_prefix}.frames"

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic_prefix}.frames.dlq"

    @property
    def inspections_topic(self) -> str:
        return f"{self.topic_prefix}.inspections"

    @property
    def models_topic(self) -> str:
        return f"{self.topic_prefix}.models"


class RedisSettings(BaseModel):
    """Live state. An empty ``url`` means: start an embedded ``redis-server``."""

    url: str = ""
    password: SecretStr | None = None
    recent_results_cap: int = Field(10_000, ge=100, description="entries kept in the recent-results stream")
    counts_ttl_s: int = Field(8 * 24 * 3600, ge=3600, description="lifetime of per-minute counters, seconds")
    wait_s: float = Field(5.0, ge=0, le=60, description="longest a batch waits for Redis before it is committed "
                                                         "without live state (which catches up later), seconds")
    settle_s: float = Field(120.0, ge=1, le=3600, description="per-minute counts are rebuilt from the SQL record "
                                                              "once a minute closed this long ago, seconds")
    rebuild_window_s: int = Field(24 * 3600, ge=3600, description="how far back counts are rebuilt when Redis "
                                                                   "comes back empty, seconds")


class DatabaseSettings(BaseModel):
    """The record (SQLAlchemy URL). SQLite file by default, PostgreSQL in production."""

    url: str = ""
    password: SecretStr | None = None
    pool_size: int = Field(5, ge=1)


class BackboneSettings(BaseModel):
    """Where teacher weights come from. Nothing is ever downloaded."""

    name: str = "efficientnet_lite0"
    weights: Path | None = Field(
        None,
        description="teacher ImageNet weights file; defaults: the efficientnet-lite0 package file, "
        "or torchvision's resnet18-f37072fd.pth in the torch hub cache",
    )


class TrainingSettings(BaseModel):
    """STPM training recipe and calibration targets: the paper's SGD, batch and input size (Wang et al. 2021,
    Sec. 4.1), 20 epochs instead of 100, and Gaussian map smoothing (see ``linewatch.detector.training``)."""

    image_size: int = Field(256, ge=32, le=1024, description="side of the square model input, pixels (paper: 256)")
    epochs: int = Field(20, ge=1, description="training epochs; the best validation epoch is kept (paper: 100)")
    batch_size: int = Field(32, ge=1, description="images per SGD step, their losses summed (paper: 32)")
    lr: float = Field(0.4, gt=0, description="SGD learning rate (paper: 0.4)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (paper: 0.9)")
    weight_decay: float = Field(1e-4, ge=0, description="SGD weight decay (paper: 1e-4)")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of good images held out for validation and "
                                "threshold calibration")
    seed: int = Field(0, description="seeds the validation split, the student's initialisation and the batch order")
    target_false_reject_rate: float = Field(
        0.01, gt=0, lt=0.5, description="share of good parts allowed above the image threshold"
    )
    pixel_false_positive_rate: float = Field(
        0.001, gt=0, lt=0.5, description="share of good pixels allowed above the region threshold"
    )
    map_smoothing_sigma: float = Field(
        4.0, ge=0, description="Gaussian sigma (model pixels) applied to anomaly maps; not in the paper; 0 = off"
    )


class DetectorSettings(BaseModel):
    """Streaming detector workers."""

    model_dir: Path | None = None
    device: Device = "auto"
    group_id: str = "linewatch-detectors"
    max_batch: int = Field(16, ge=1, le=1024)
    max_wait_ms: int = Field(50, ge=0, description="longest a frame waits for its batch to fill, ms")
    max_pixels: int = Field(40_000_000, ge=1, description="frames with more pixels are dead-lettered")
    good_sample_rate: float = Field(0.02, ge=0, le=1, description="share of good frames kept for review")
    metrics_port: int | None = Field(None, description="Prometheus /metrics and /healthz port; none = off")


class IngestSettings(BaseModel):
    """Camera services."""

    jpeg_quality: int = Field(92, ge=10, le=100)
    buffer_frames: int = Field(64, ge=1, description="frames held while Kafka is slow, then the oldest drop")
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    metrics_port: int | None = None


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
    query_timeout_s: float = Field(5.0, gt=0, description="longest a dashboard SQL query may run, seconds")
    timezone: str = Field("UTC", description="IANA time zone for times shown and for shift boundaries")
    shift_starts: list[str] = Field(["06:00", "14:00", "22:00"], min_length=1,
                                    description="local times (HH:MM) at which shifts start")
    metrics_port: int | None = Field(None, description="Prometheus /metrics, /healthz, /readyz port; none = off")

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


class Settings(BaseSettings):
    """Root settings object; see the module docstring for where values come from."""

    model_config = SettingsConfigDict(
        env_prefix="LINEWATCH_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    state_dir: Path = Field(Path("var"), description="embedded state: SQLite file, image store, models")
    data_root: Path = Field(default_factory=_default_data_root, description="real datasets (MVTec AD, ...)")
    image_store: str = Field("", description="where kept frames go; a directory or file:// URI")
    artifact_store: str = Field("", description="where model versions go; a directory or file:// URI")
    log_format: Literal["json", "text"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    database: DatabaseSettings = DatabaseSettings()
    backbone: BackboneSettings = BackboneSettings()
    training: TrainingSettings = TrainingSettings()
    detector: DetectorSettings = DetectorSettings()
    ingest: IngestSettings = IngestSettings()
    dashboard: DashboardSettings = DashboardSettings()
    trainer: TrainerSettings = TrainerSettings()

    @field_validator("state_dir", "data_root")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def database_url(self) -> str:
        """The SQL URL, with ``database.password`` filled in; the embedded default is a SQLite file in ``state_dir``."""
        url = self.database.url or f"sqlite:///{(self.state_dir / 'linewatch.db').resolve()}"
        if self.database.password is None:
            return url
        from sqlalchemy.engine import make_url

        return make_url(url).set(password=self.database.password.get_secret_value()).render_as_string(
            hide_password=False)

    @property
    def image_store_root(self) -> Path:
        return path_of(self.image_store) if self.image_store else self.state_dir / "images"

    @property
    def artifact_store_root(self) -> Path:
        return path_of(self.artifact_store) if self.artifact_store else self.state_dir / "models"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = os.environ.get(CONFIG_ENV)
        if config:
            path = Path(config).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"{CONFIG_ENV}={config}: no such config file")
            try:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"{CONFIG_ENV}={config}: not valid TOML: {exc}") from None
        secrets = os.environ.get(SECRETS_DIR_ENV)
        if secrets:
            # One file per setting, named <section>__<field> (e.g. database__password), as Docker secrets are.
            sources.append(NestedSecretsSettingsSource(file_secret_settings, secrets_dir=secrets, secrets_prefix="",
                                                       secrets_nested_delimiter="__", secrets_dir_missing="error"))
        return tuple(sources)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


# Environment variables that start with LINEWATCH_ but are not settings.
_NOT_SETTINGS = {CONFIG_ENV, SECRETS_DIR_ENV, "LINEWATCH_WITH_BROWSER"}


def _section_model(section: str) -> type[BaseModel] | None:
    info = Settings.model_fields.get(section)
    model = info.annotation if info else None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _known(section: str, field: str | None = None) -> bool:
    if field is None:
        return section in Settings.model_fields
    model = _section_model(section)
    return model is not None and field in model.model_fields


def unknown_settings(environ: dict[str, str] | None = None) -> list[str]:
    """Names that look like settings but match none, so they would be silently ignored (a misspelt
    ``LINEWATCH_DETECTOR__MAX_BACH``, a ``[detektor]`` table in the config file); for a warning."""
    environ = dict(os.environ) if environ is None else environ
    found = []
    for name in sorted(environ):
        if not name.startswith("LINEWATCH_") or name in _NOT_SETTINGS:
            continue
        section, nested, field = name.removeprefix("LINEWATCH_").lower().partition("__")
        if not _known(section, field if nested else None):
            found.append(name)
    config = environ.get(CONFIG_ENV)
    try:
        table = tomllib.loads(Path(config).expanduser().read_text()) if config else {}
    except (tomllib.TOMLDecodeError, OSError):  # reported when the settings are read
        table = {}
    for section, value in table.items():
        if isinstance(value, dict) and _section_model(section) is not None:
            found += [f"{config}: [{section}] {k}" for k in value if not _known(section, k)]
        elif not _known(section):
            found.append(f"{config}: {section}")
    return found
