"""``linewatch up`` and ``dashboard``: the whole system on one machine (see :mod:`linewatch.cli.up`), and the
Streamlit dashboard."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from .errors import fail, user_errors
from .options import load_settings, with_values


def up(
    max_frames: Annotated[int | None, typer.Option(
        min=1, help="stop after this many frames are inspected or dead-lettered; print a JSON summary")] = None,
    workers: Annotated[int, typer.Option(min=1, help="detector workers")] = 1,
    fps: Annotated[float, typer.Option(min=0.0, help="camera frame rate; 0 = as fast as possible")] = 10.0,
    model: Annotated[Path | None, typer.Option(
        help="model directory (default: train on the bottle images once)")] = None,
    source: Annotated[Path | None, typer.Option(
        help="image folder the camera replays (default: bottle test images)")] = None,
    dashboard: Annotated[bool, typer.Option(help="start the dashboard")] = True,
    trainer: Annotated[bool, typer.Option(help="start the retraining service")] = True,
    dashboard_port: Annotated[int, typer.Option(help="dashboard port")] = 8501,
    dashboard_address: Annotated[str, typer.Option(
        help="interface the dashboard listens on: this machine only unless you choose one (0.0.0.0: every "
             "interface, where anyone on the network can open it)")] = "127.0.0.1",
    epochs: Annotated[int | None, typer.Option(min=1, help="epochs when the default model is trained")] = None,
    products: Annotated[str | None, typer.Option(
        help="run several products: bottle,magnetic_tile starts a camera and a demo model per product (each trained "
             "once on its shared data set), and every worker scores each frame with its product's model")] = None,
) -> None:
    """Run everything on this machine with embedded defaults: broker, Redis, SQLite, model, camera, workers."""
    from .up import UpOptions, run_up

    options = UpOptions(max_frames=max_frames, workers=workers, fps=fps, model=model, source=source,
                        dashboard=dashboard, dashboard_port=dashboard_port, dashboard_address=dashboard_address,
                        trainer=trainer, epochs=epochs,
                        products=[p.strip() for p in products.split(",") if p.strip()] if products else [])
    with user_errors():
        code = run_up(load_settings(), options)
    raise typer.Exit(code)


def dashboard(
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="port [settings: dashboard.port]")] = None,
    address: Annotated[str | None, typer.Option(help="interface to listen on [settings: dashboard.address]")] = None,
    init_accounts: Annotated[bool, typer.Option(
        "--init-accounts", help="when the accounts file (dashboard.accounts_file) does not exist, create it with "
        "one engineer, admin, and print a random password once (as `linewatch operator init`)")] = False,
) -> None:
    """Run the Streamlit dashboard: live defect rates, heatmaps, defect gallery, operator review, models.

    The process becomes ``streamlit run`` (same PID), so SIGTERM stops the dashboard directly.
    """
    s = with_values(load_settings(), "dashboard", port=port, address=address)
    if init_accounts:
        from .accounts import init_accounts_file

        if s.dashboard.accounts_file is None:
            fail("--init-accounts needs an accounts file: set LINEWATCH_DASHBOARD__ACCOUNTS_FILE")
        init_accounts_file(s.dashboard.accounts_file)
    _refuse_a_newer_record(s.database_url)
    # `streamlit run dashboard/app.py` with these options (see linewatch.dashboard.launch for why a launcher).
    # runner.postScriptGC off: Streamlit would run a full gc.collect() after every run, and each open page's
    # alarm banner reruns every refresh_s. Over the heap torch and the model code leave, that held the GIL
    # ~0.3 s a run: with three pages open the server used a whole core and answered a click 40 s late.
    argv = [sys.executable, "-m", "linewatch.dashboard.launch",
            "--server.port", str(s.dashboard.port), "--server.address", s.dashboard.address,
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none", "--server.runOnSave", "false",
            "--client.toolbarMode", "minimal", "--runner.postScriptGC", "false"]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)



def _refuse_a_newer_record(url: str) -> None:
    """Stop here, before Streamlit starts, when a newer release stamped the record (SchemaVersionError, reported
    by the CLI in one line). A record that does not answer yet is left to the pages, which show that per query."""
    from sqlalchemy.exc import OperationalError

    from linewatch.contracts.database import refuse_newer_record

    try:
        refuse_newer_record(url)
    except OperationalError:
        pass
