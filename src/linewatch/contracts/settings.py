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
from pydantic_settings import BaseSettings, NestedSecretsSettingsSource, SettingsConfigDict, TomlConfigSettingsSource
from pydantic_settings import PydanticBaseSettingsSource as Source

from .dashboard_settings import DashboardSettings
from .drift_settings import DriftSettings  # noqa: F401 -- [detector.drift], importable from here too
from .files import path_of
from .product_settings import ProductSettings
from .trainer_settings import TrainerSettings

CONFIG_ENV = "LINEWATCH_CONFIG"
SECRETS_DIR_ENV = "LINEWATCH_SECRETS_DIR"

Device = Literal["auto", "cpu", "cuda"]
Runtime = Literal["auto", "torch", "onnxruntime", "openvino", "openvino-bf16", "openvino-int8",  # runtimes.RUNTIMES
                  "torch-compile", "onnxruntime-cuda", "onnxruntime-tensorrt"]
MiB = 1024 * 1024


def _default_data_root() -> Path:
    """``../shared/data`` beside the working directory or this checkout (3 folders above this file), if any."""
    candidates = [Path.cwd() / ".." / "shared" / "data", Path(__file__).resolve().parents[3] / ".." / "shared" / "data"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return candidates[0]


class TopicRetention(BaseModel):
    """What the frames topic keeps: Kafka deletes a closed segment once it is older than ``ms`` or its
    partition holds more than ``bytes``; a segment closes at ``segment_bytes`` or after ``segment_ms``.
    6 h: a worker outage that long is caught up (frames kept for review live in the image store)."""

    ms: int = Field(6 * 3600_000, ge=60_000, description="retention.ms: age after which data is deleted, ms")
    bytes: int = Field(512 * MiB, ge=MiB, description="retention.bytes: most data kept per partition, bytes")
    segment_bytes: int = Field(64 * MiB, ge=MiB, description="segment.bytes, at least the topic's largest message "
                               "(Kafka: 1 GiB, which would keep 1 GiB per partition whatever the retention)")
    segment_ms: int = Field(3600_000, ge=60_000, description="segment.ms: a segment closes after this long, ms")

    def topic_configs(self, largest_message: int = 0) -> dict[str, str]:
        """The topic configs (Kafka's names, string values); segments hold at least ``largest_message`` bytes."""
        segment = max(min(self.segment_bytes, self.bytes), largest_message)
        return {"retention.ms": str(self.ms), "retention.bytes": str(self.bytes), "segment.bytes": str(segment),
                "segment.ms": str(min(self.segment_ms, self.ms))}


class ResultsRetention(TopicRetention):
    """What the inspections and dead-letter topics keep: a week, for line integration and for replaying
    dead letters."""

    ms: int = Field(7 * 24 * 3600_000, ge=60_000, description="retention.ms, ms")
    bytes: int = Field(256 * MiB, ge=MiB, description="retention.bytes per partition, bytes")


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
    # Not Kafka's 500: a consumer sends one fetch per broker at a time, leaving out a partition whose records it
    # still buffers; such a fetch of only idle partitions is held this long while the next frames of the busy one
    # wait behind it (bench/README.md, "Latency": stalls of 450 ms at 10 frames/s).
    fetch_max_wait_ms: int = Field(100, ge=0, le=10_000, description="longest the broker may hold a fetch while "
                                   "no data waits for it, ms (Kafka's fetch.max.wait.ms)")
    # Retention, set as topic configs where the topics are created (and brought in line on existing ones):
    # what a topic keeps is bounded by time and by size, so a broker left running for days stays bounded.
    # Sizes are per partition (Kafka's retention.bytes): a topic holds up to partitions x that, plus one
    # open segment per partition, which retention never deletes.
    frames_retention: TopicRetention = TopicRetention()
    results_retention: ResultsRetention = ResultsRetention()
    embedded_heap_mb: int = Field(256, ge=128, le=8192, description="JVM heap of the embedded Apache Kafka "
                                  "that `linewatch up` starts, MiB (fixed; RSS 249 MiB at 256 in bench/soak.py)")

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
    Sec. 4.1), 20 epochs and at least ``min_steps`` SGD steps instead of 100 epochs, and Gaussian map smoothing
    (see ``linewatch.detector.training``)."""

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
    min_held_out_goods: int = Field(20, ge=1, description="fewest held-out good images a threshold may be set on "
                                    "(also at least 1 / target_false_reject_rate); fewer refuse the model")
    allow_under_calibrated: bool = Field(False, description="publish a model with too few held-out good images "
                                         "anyway, marked under-calibrated")
    map_smoothing_sigma: float = Field(
        4.0, ge=0, description="Gaussian sigma (model pixels) applied to anomaly maps; not in the paper; 0 = off"
    )
    input_mode: Literal["auto", "letterbox", "tile", "resize"] = Field(
        "auto", description="model input geometry (linewatch.detector.geometry): auto = letterbox (aspect kept, "
        "padded) up to max_aspect, tiled beyond; resize = squeezed to a square (models without the field)")
    max_aspect: float = Field(2.0, ge=1, description="longest longer/shorter side ratio letterboxed in auto mode; "
                              "longer frames (line-scan strips) are tiled")
    tile_scale: float | None = Field(None, gt=0, description="model pixels per frame pixel when tiling; none = "
                                     "measured on the training images (the scale the model learns parts at)")
    tile_overlap: float = Field(0.25, ge=0, le=0.9, description="least overlap of neighbouring tiles, share of "
                                "the tile side; overlaps take the maximum of the tiles' anomaly maps")
    augment: bool = Field(False, description="few-shot recipe: translate and jitter brightness/contrast slightly "
                          "(linewatch.detector.recipe)")
    augment_flips: bool = Field(False, description="with augment: flip too (only for parts whose mirror image is good)")
    augment_rot90: bool = Field(False, description="with augment: turn by multiples of 90 degrees too (only for parts "
                                "any orientation of which is good)")
    # 360 SGD steps: about what 20 epochs of Magnetic Tile make (571 training goods: 18 steps an epoch, 20 for their 620
    # windows under the auto geometry); bottle's 167 made 120 in 20 epochs, and its held-out goods' loss was still
    # falling (0.39 at epoch 20, 0.18 at epoch 59 of 60). Counted in steps, a small set trains
    # as far as a large one, and a large one exactly as before.
    min_steps: int = Field(360, ge=0, description="raise epochs until training makes at least this many SGD steps "
                           "(0 = off); epochs set explicitly (settings, environment, --epochs) are trained as set "
                           "unless min_steps is set too; fine-tunes keep their epochs")
    global_branch: bool = Field(True, description="also fit the image-level global branch (a Gaussian of pooled "
                                "teacher features, fused with STPM's image score; linewatch.detector.global_branch)")



class DetectorSettings(BaseModel):
    """Streaming detector workers."""

    model_dir: Path | None = None
    device: Device = "auto"
    runtime: Runtime = Field("auto", description="torch, onnxruntime or openvino (the model's ONNX export or "
                             "OpenVINO IR, CPU float32) or auto: the fastest that matches eager PyTorch on the model's "
                             "held-out goods; openvino-bf16 / openvino-int8: opt-in reduced precision with its own "
                             "recalibrated thresholds; torch-compile, onnxruntime-cuda, onnxruntime-tensorrt: CUDA "
                             "at float32, checked against eager PyTorch at load")
    workers_on_host: int = Field(1, ge=1, description="detector workers sharing this host's CPUs (linewatch up "
                                 "--workers N sets it): each worker and the trainer use the available CPUs / this")
    group_id: str = "linewatch-detectors"
    max_batch: int = Field(16, ge=1, le=1024)
    max_wait_ms: int = Field(50, ge=0, description="longest a frame waits for its batch to fill, ms")
    max_pixels: int = Field(40_000_000, ge=1, description="frames with more pixels are dead-lettered")
    good_sample_rate: float = Field(0.02, ge=0, le=1, description="share of good frames kept for review")
    clock_ahead_s: float = Field(2.0, ge=0, description="a capture time later than the frame's arrival by more "
                                 "than this is a camera clock running ahead (latency then starts at arrival)")
    clock_behind_s: float = Field(120.0, ge=0, description="a capture time earlier than the frame's arrival by more "
                                  "than this is a camera clock running behind (latency then starts at arrival)")
    metrics_port: int | None = Field(None, description="Prometheus /metrics and /healthz port; none = off")
    stall_after_s: float = Field(120.0, gt=0, description="oldest batch in flight or silent loop past this: stalled, s")
    model_memory_mb: int = Field(2048, ge=1, description="models a worker keeps loaded, one per product, least "
                                 "recently used evicted beyond this many MB of model files (docs/products.md)")
    drift: DriftSettings = DriftSettings()


class IngestSettings(BaseModel):
    """Camera services."""

    jpeg_quality: int = Field(92, ge=10, le=100)
    buffer_frames: int = Field(64, ge=1, description="frames held while Kafka is slow, then the oldest drop")
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    metrics_port: int | None = None


class ImageSettings(BaseModel):
    """Retention of kept frames in the image store (labelled and trained-on frames are never removed)."""

    max_age_days: float | None = Field(30.0, gt=0, description="kept frames older than this are removed; none = "
                                       "kept until space runs short")
    min_free_ratio: float = Field(0.05, ge=0, lt=1, description="share of the image store's file system kept free: "
                                  "below it the oldest kept frames are removed")
    check_s: float = Field(30.0, gt=0, description="how often a worker applies retention, seconds")


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
    images: ImageSettings = ImageSettings()
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
    products: ProductSettings = ProductSettings()

    @field_validator("state_dir", "data_root")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def sqlite_path(self) -> Path:
        """The embedded record: a SQLite file in ``state_dir`` (used when ``database.url`` is not set)."""
        return self.state_dir / "linewatch.db"

    @property
    def database_url(self) -> str:
        """The SQL URL, with ``database.password`` filled in; the embedded default is a SQLite file in ``state_dir``."""
        url = self.database.url or f"sqlite:///{self.sqlite_path.resolve()}"
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
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: Source, env_settings: Source,
                                   dotenv_settings: Source, file_secret_settings: Source) -> tuple[Source, ...]:
        sources: list[Source] = [init_settings, env_settings]
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

