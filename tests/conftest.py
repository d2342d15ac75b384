"""Shared pytest fixtures.

Real services (session-scoped, started on first use, stopped at session end): ``apache_kafka``,
``postgres_server``, ``redis_service`` (+ ``redis_url``). Their system packages come from
``scripts/install-system-deps.sh``; a missing one fails the test with that hint rather than skipping it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from linewatch.cli.embedded import EmbeddedServiceError, ManagedProcess, redis_server
from linewatch.cli.embedded_kafka import ApacheKafka, fetch_kafka_libs
from linewatch.detector.runtimes.threads import apply_torch_threads

# tests/ is on sys.path (pytest's rootdir-less conftest), so its services package imports as `services`.
from services.postgres import PostgresServer

INSTALL_HINT = "run scripts/install-system-deps.sh"
# torch's intra-op threads in every test process. A training's float sums depend on the thread count, and a few
# epochs of SGD on a few dozen images carry that into the calibrated threshold (c09's 20-epoch model: threshold
# 0.519 trained at 2 threads, 0.297 at 1, and c11's strip then at 0.96x and 1.22x it), so the expected values are
# measured at this count, whatever an earlier test in the same process set (the suite runs in two processes).
TORCH_THREADS = 2


# The test files that take longest, longest first: measured in one two-process run (test_up 369 s, test_pipeline 271,
# test_cli 192, test_review_page 143, test_sign_in 131, test_dashboard 104, test_console_reach 101; the suite's
# files 2537 s in all). pytest-xdist's `--dist loadfile` hands files to the processes in collection order
# (`--no-loadscope-reorder`, scripts/test.sh), so a long file never starts last while the other process idles.
LONGEST_FILES_FIRST = ("test_up.py", "test_pipeline.py", "test_cli.py", "test_review_page.py", "test_sign_in.py",
                       "test_dashboard.py", "test_console_reach.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    """Every test starts at :data:`TORCH_THREADS` intra-op threads (a test may set others for itself)."""
    apply_torch_threads(TORCH_THREADS)


def _failure(error: EmbeddedServiceError) -> BaseException:
    """The exception that fails the requesting test (a missing service is an error, not a skip)."""
    message = str(error)
    if INSTALL_HINT not in message:
        message += f"\n(if a system package is missing: {INSTALL_HINT})"
    return pytest.fail.Exception(message, pytrace=False)


def _start(service: ApacheKafka | PostgresServer | ManagedProcess) -> None:
    """Start ``service``, or fail the requesting test saying why."""
    try:
        service.start()
    except EmbeddedServiceError as exc:
        raise _failure(exc) from None


@pytest.fixture(scope="session")
def apache_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafka]:
    """A single-node Apache Kafka (KRaft), the one ``linewatch up`` embeds; ``.bootstrap_servers`` is
    ``127.0.0.1:<port>``. Its jars are fetched here if ``scripts/bootstrap.sh`` has not yet done it."""
    try:
        fetch_kafka_libs()
    except EmbeddedServiceError as exc:
        raise _failure(exc) from None
    kafka = ApacheKafka(tmp_path_factory.mktemp("kafka"))
    try:
        _start(kafka)
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A PostgreSQL server with database ``linewatch``; ``.url`` is its SQLAlchemy URL."""
    postgres = PostgresServer(tmp_path_factory.mktemp("postgres"))
    try:
        _start(postgres)
        yield postgres
    finally:
        postgres.close()


@pytest.fixture(scope="session")
def redis_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """A ``redis-server`` on a free port (``.port``); see ``redis_url``."""
    try:
        redis = redis_server(tmp_path_factory.mktemp("redis"))
    except EmbeddedServiceError as exc:
        raise _failure(exc) from None
    try:
        _start(redis)
        yield redis
    finally:
        redis.stop()


@pytest.fixture(scope="session")
def redis_url(redis_service: ManagedProcess) -> str:
    """``redis://127.0.0.1:<port>/0`` of ``redis_service``."""
    return f"redis://127.0.0.1:{redis_service.port}/0"


@pytest.fixture(scope="session")
def quick_model(tmp_path_factory: pytest.TempPathFactory):
    """A small STPM model trained briefly on 24 real bottle images at 128 px (about 20 s on 2 cores), without the
    global branch: a model as trained before it (tests/test_global_branch.py gives a copy of it one)."""
    from linewatch.detector.datasets import open_dataset
    from linewatch.detector.training import TrainConfig, train

    from datasets import bottle

    config = TrainConfig(image_size=128, epochs=8, batch_size=4, seed=7, device="cpu", map_smoothing_sigma=2.0,
                         allow_under_calibrated=True, global_branch=False)  # 5 held-out goods: too few for 1%
    dataset = open_dataset(bottle())
    apply_torch_threads(TORCH_THREADS)  # session fixtures are set up before the autouse one
    return train(dataset.train[::8][:24], tmp_path_factory.mktemp("model") / "bottle-quick", config, progress=False)


@pytest.fixture(scope="session")
def c09_train40(tmp_path_factory: pytest.TempPathFactory):
    """A model of the default input geometry trained on field case c09's ``train40`` (40 goods, 320x240) with
    ``C09_TRAIN40_CONFIG`` (field cases c09, c10)."""
    from linewatch.detector.training import TrainConfig, train

    from datasets import C09_TRAIN40_CONFIG, field_case

    images = sorted((field_case("c09_threshold_few_goods") / "train40").glob("*.jpg"))
    apply_torch_threads(TORCH_THREADS)  # session fixtures are set up before the autouse one
    return train(images, tmp_path_factory.mktemp("c09") / "train40", TrainConfig(**C09_TRAIN40_CONFIG),
                 progress=False)


@pytest.fixture(scope="session")
def c09_default_model(tmp_path_factory: pytest.TempPathFactory):
    """What ``linewatch train --data <c09>/train40 --force --epochs 20`` makes on the CPU (field case c11's model):
    the default recipe (256 px, batches of 32, the ``auto`` input geometry) at 20 epochs, without the step budget
    that would train its 32 training goods 360 epochs, under-calibrated on 8 held-out goods; about 90 s on 2 cores.
    It generalises across positions where ``c09_train40`` (8 epochs of batches of 4 at 128 px) knows its 20 images
    by heart: that one scores even a 320x240 crop of c11's strip at 3x its threshold."""
    from linewatch.detector.training import TrainConfig, train

    from datasets import field_case

    images = sorted((field_case("c09_threshold_few_goods") / "train40").glob("*.jpg"))
    # Without the global branch, as c11's figures were measured: the branch on this strip is not measured yet
    config = TrainConfig(device="cpu", allow_under_calibrated=True, global_branch=False)
    apply_torch_threads(TORCH_THREADS)  # session fixtures are set up before the autouse one
    return train(images, tmp_path_factory.mktemp("c09") / "default", config, progress=False)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'linewatch.db'}"
