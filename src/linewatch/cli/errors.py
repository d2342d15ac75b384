"""How the ``linewatch`` command reports what went wrong: one ``error: ...`` line on stderr and an exit status,
never a traceback, for every error an operator can fix.

* :func:`fail` prints the line and exits (status 2 unless told otherwise);
* :func:`user_errors` maps a command's own input errors (bad file, missing weights, no GPU, ...) to :func:`fail`;
* :func:`service_errors` does the same, around the whole app, for the services it talks to.

The modules holding those exceptions are imported only when a command enters one of these blocks, so
``linewatch --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import NoReturn

import typer

from linewatch.contracts.settings import get_settings


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` to stderr and exit with ``code`` (SystemExit, so it also works in
    :func:`service_errors`, outside the app)."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    sys.exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix (bad file, missing weights, ...) into one clear line and exit 2."""
    from linewatch.detector.backbones import WeightsNotFoundError
    from linewatch.detector.datasets import DatasetError
    from linewatch.detector.imaging import ImageError
    from linewatch.detector.model_files import ModelFileError
    from linewatch.detector.runtimes import RuntimeChoiceError
    from linewatch.detector.runtimes.onnx_export import ExportError
    from linewatch.detector.training import TrainingError

    try:
        yield
    except (ImageError, DatasetError, ModelFileError, WeightsNotFoundError, TrainingError, RuntimeChoiceError,
            ExportError) as exc:
        fail(str(exc))
    except RuntimeError as exc:
        if "cuda" in str(exc).lower():
            fail(str(exc))
        raise


@contextlib.contextmanager
def service_errors() -> Iterator[None]:
    """The service errors an operator can fix (no broker configured or reachable, Redis or the SQL store down,
    a record stamped by a newer release, a state folder that cannot be made) reported in one line, exit
    status 2, instead of a traceback."""
    import redis
    from kafka.errors import KafkaError
    from sqlalchemy.exc import OperationalError

    from linewatch.contracts.database import SchemaVersionError
    from linewatch.contracts.kafka import KafkaNotConfiguredError

    try:
        yield
    except (KafkaNotConfiguredError, SchemaVersionError) as exc:
        fail(str(exc))
    except KafkaError as exc:
        servers = get_settings().kafka.bootstrap_servers
        fail(f"Kafka at {servers} did not answer: {type(exc).__name__}: {exc}")
    except redis.ConnectionError as exc:
        fail(f"Redis at {get_settings().redis.url} did not answer: {exc}")
    except OperationalError as exc:
        fail(f"the SQL store did not answer: {str(exc.orig).strip() or exc}")
    except (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError) as exc:
        fail(str(exc))
