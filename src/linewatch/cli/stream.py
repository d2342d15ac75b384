"""``linewatch ingest`` and ``detect``: the two ends of the frame stream, a camera publishing to Kafka and a
detector worker consuming from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .errors import fail, user_errors
from .options import DeviceOpt, RuntimeOpt, device_name, load_settings, with_values


def ingest(
    camera_id: Annotated[str, typer.Option("--camera-id", help="camera identity (the Kafka message key)")],
    source: Annotated[str, typer.Option(
        "--source", help="USB device index, RTSP/HTTP URL, video file or image folder")],
    fps: Annotated[float, typer.Option(min=0.0, help="frames per second; 0 = as fast as the source gives")] = 10.0,
    line_id: Annotated[str, typer.Option("--line-id", help="production line of this camera")] = "line-1",
    loop: Annotated[bool, typer.Option(help="replay a folder or video file forever")] = False,
    max_frames: Annotated[int | None, typer.Option(min=1, help="stop after this many frames")] = None,
    jpeg_quality: Annotated[int | None, typer.Option(min=10, max=100, help="JPEG quality of captured frames")] = None,
    product: Annotated[str | None, typer.Option(
        help="the product every frame shows (its 'product' header); default: none, the workers take the camera's "
             "product from the changeovers (linewatch camera product)")] = None,
    glob: Annotated[str | None, typer.Option(help="of an image folder, replay only files matching this")] = None,
) -> None:
    """Run a camera service: capture frames and publish them to Kafka. Prints its counters as JSON at the end."""
    from dataclasses import asdict

    from linewatch.contracts.kafka import ensure_topics
    from linewatch.contracts.messages import MessageError, check_id
    from linewatch.contracts.products import ProductError, check_product
    from linewatch.ingest.camera import CameraService
    from linewatch.ingest.sources import SourceError, open_source

    s = with_values(load_settings(), "ingest", jpeg_quality=jpeg_quality)
    try:
        check_id("--camera-id", camera_id)  # every frame of an id no store can hold would be dead-lettered
        check_id("--line-id", line_id)
        if product:
            check_product(product)
        src = open_source(source, loop=loop, jpeg_quality=s.ingest.jpeg_quality, glob=glob)
    except (SourceError, MessageError, ProductError) as exc:
        fail(str(exc))
    ensure_topics(s.kafka)
    server = None
    if s.ingest.metrics_port:
        from linewatch.observability import serve_metrics

        server = serve_metrics(s.ingest.metrics_port)
    counters = CameraService(s, camera_id, line_id, src, fps=fps, max_frames=max_frames, product=product).run()
    if server is not None:
        server.shutdown()
    typer.echo(json.dumps({"camera_id": camera_id, **asdict(counters)}))
    if counters.failed:
        raise typer.Exit(1)


def detect(
    model: Annotated[Path | None, typer.Option(
        "--model", help="model directory [settings: detector.model_dir]")] = None,
    group: Annotated[str | None, typer.Option("--group", help="consumer group")] = None,
    device: DeviceOpt = None,
    max_batch: Annotated[int | None, typer.Option(min=1, help="frames per inference batch at most")] = None,
    max_wait_ms: Annotated[int | None, typer.Option(min=0, help="longest a frame waits for its batch, ms")] = None,
    threads: Annotated[int | None, typer.Option(
        min=1, help="CPU threads for inference (default: the CPUs available (affinity, cgroup quota) / "
        "detector.workers_on_host; all but one for a single frame)")] = None,
    runtime: RuntimeOpt = None,
    follow_registry: Annotated[bool, typer.Option(
        help="score with the registry's active model and follow rollouts")] = True,
) -> None:
    """Run a detector worker in the consumer group; start more to scale out (up to the partition count)."""
    from linewatch.contracts.database import refuse_newer_record
    from linewatch.contracts.kafka import ensure_topics
    from linewatch.detector.stream.main import run_worker  # the CLI's only import of the streaming worker

    s = with_values(load_settings(), "detector", model_dir=model, group_id=group, device=device_name(device),
                    max_batch=max_batch, max_wait_ms=max_wait_ms, runtime=runtime.value if runtime else None)
    if s.detector.model_dir is None and not follow_registry:
        fail("no model: pass --model MODEL_DIR or set LINEWATCH_DETECTOR__MODEL_DIR")
    refuse_newer_record(s.database_url)  # before topics are made or the model loaded
    ensure_topics(s.kafka)
    with user_errors():
        try:
            code = run_worker(s, s.detector.model_dir, threads, follow_registry)
        except ValueError as exc:
            fail(str(exc))
    raise typer.Exit(code)
