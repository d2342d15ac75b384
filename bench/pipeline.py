"""Pipeline benchmark: frames/s through Kafka -> workers -> Redis + SQL, end-to-end latency, and the
ratio to offline batch scoring of the same frames at the same batch size.

    python bench/pipeline.py [--model MODEL_DIR] [--frames 332] [--workers 1 2] [--products 1 2] [--batch 16]
        [--fps 10] [--threads N] [--runtime auto|torch|onnxruntime|openvino|openvino-int8|...] [--no-latency]

Runs on the embedded services (Apache Kafka as `linewatch up` starts it, redis-server, a SQLite file) unless
``--bootstrap HOST:PORT`` points at a Kafka cluster. Three measurements, side by side in one run:

* throughput: a backlog of ``--frames`` bottle test frames is published first, then N workers drain
  it; frames/s = frames / (last SQL commit - first SQL commit). With ``--products 1 2`` also with two products
  interleaved on every partition (the model registered as products ``p1`` and ``p2``, the workers following the
  registry, every partition fed by one camera per product): each batch is then one model call per product;
* offline: the same encoded frames decoded, prepared and scored in this process, batch by batch, with the
  workers' ``--runtime`` (the fastest matching one for ``auto``);
* latency: one camera at ``--fps`` frames/s for ``--seconds`` s with one worker; p50/p99 of
  captured_at -> SQL commit, against the median model time of one batch.

Targets (issue 3): pipeline throughput >= 85% of offline; p99 latency at 10 frames/s <= 3x one batch.
Issue 18: two products interleaved >= 80% of the single-product throughput.
Writes ``bench/results/pipeline.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from linewatch.detector.runtimes import RUNTIMES  # constants only: no torch yet

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "bench" / "results" / "models" / "bottle")
    parser.add_argument("--frames", type=int, default=332)
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--bootstrap", default="")
    parser.add_argument("--threads", type=int, default=None,
                        help="inference threads per worker (default: the worker's own choice per batch)")
    parser.add_argument("--runtime", default="auto", choices=RUNTIMES,
                        help="the workers' and the offline scoring's runtime (auto: the fastest matching one)")
    parser.add_argument("--products", nargs="+", type=int, default=[1], help="products interleaved (1, 2, ...)")
    parser.add_argument("--latency-only", action="store_true", help="skip the throughput runs")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pipeline.json")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the broker and Redis started below are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not (args.model / "model.json").is_file():
        print(f"no model at {args.model}: run bench/accuracy.py first or pass --model", file=sys.stderr)
        return 2

    import numpy as np
    import torch
    from sqlalchemy import select

    from linewatch.cli.embedded import redis_server
    from linewatch.cli.embedded_kafka import ApacheKafka
    from linewatch.contracts.database import make_engine, migrate
    from linewatch.contracts.kafka import ensure_topics
    from linewatch.contracts.schema import Inspection
    from linewatch.contracts.settings import Settings
    from linewatch.detector.imaging import decode_image
    from linewatch.detector.scoring import Scorer
    from linewatch.ingest.camera import CameraService
    from linewatch.ingest.sources import ImageFolderSource

    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"linewatch-bench-{uuid.uuid4().hex[:6]}"
    services = []
    if not args.bootstrap:
        services.append(ApacheKafka(work / "kafka").start())
        args.bootstrap = services[-1].bootstrap_servers
    services.append(redis_server(work / "redis").start())
    redis_url = f"redis://127.0.0.1:{services[-1].port}/0"
    bottle_test = Settings().data_root / "mvtec_ad" / "bottle" / "test"
    files = sorted(bottle_test.rglob("*.png"))
    results: dict = {"frames": args.frames, "batch": args.batch, "cpu_threads": torch.get_num_threads(),
                     "model": str(args.model), "load_average_start": os.getloadavg()}

    def run(name: str, workers: int, publish, threads: int | None, products: int = 1) -> tuple[list, float]:
        prefix = f"b{uuid.uuid4().hex[:6]}"
        env = {**os.environ, "LINEWATCH_KAFKA__BOOTSTRAP_SERVERS": args.bootstrap, "LINEWATCH_KAFKA__TOPIC_PREFIX":
               prefix, "LINEWATCH_KAFKA__SESSION_TIMEOUT_MS": "6000", "LINEWATCH_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
               "LINEWATCH_REDIS__URL": redis_url, "LINEWATCH_DATABASE__URL": f"sqlite:///{work / (name + '.db')}",
               "LINEWATCH_STATE_DIR": str(work / name), "LINEWATCH_DETECTOR__MAX_BATCH": str(args.batch),
               "LINEWATCH_DETECTOR__GOOD_SAMPLE_RATE": "0.02", "LINEWATCH_LOG_FORMAT": "json",
               "LINEWATCH_DETECTOR__GROUP_ID": f"{prefix}-detectors"}  # runs share the broker, not a group
        settings = Settings(kafka={"bootstrap_servers": args.bootstrap, "topic_prefix": prefix},
                            database={"url": env["LINEWATCH_DATABASE__URL"]}, state_dir=work / name)
        engine = make_engine(settings.database_url)
        migrate(engine)
        ensure_topics(settings.kafka)
        procs = []
        (work / name).mkdir(parents=True, exist_ok=True)
        published_before = publish == "backlog"
        names = [f"p{k + 1}" for k in range(products)] if products > 1 else [None]
        model_opts = ["--model", str(args.model), "--no-follow-registry"]
        if products > 1:  # every product's version is the same model: only the routing differs
            from linewatch.trainer.registry import ModelRegistry

            registry = ModelRegistry(engine, settings.artifact_store_root, settings.kafka)
            for product in names:
                registry.use(args.model, "bench", product=product)
            model_opts = []
        if published_before:
            _publish(settings, files, args.frames, 0.0, CameraService, ImageFolderSource,
                     cameras=settings.kafka.frames_partitions, products=names)
        for i in range(workers):
            log = open(work / name / f"worker-{i}.log", "ab")  # noqa: SIM115
            threads_opt = ["--threads", str(threads)] if threads else []
            procs.append(subprocess.Popen([sys.executable, "-m", "linewatch", "detect", *model_opts,
                                           "--runtime", args.runtime, *threads_opt],
                                          env=env, stdout=log, stderr=log))
        if not published_before:  # the camera starts once every worker has its model loaded and its partitions
            _wait_for_partitions(redis_url, settings.kafka.frames_topic, workers, procs)
            _publish(settings, files, int(args.fps * args.seconds), args.fps, CameraService, ImageFolderSource)
        target = args.frames if published_before else int(args.fps * args.seconds)
        deadline = time.monotonic() + 900
        rows: list = []
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                rows = conn.execute(select(Inspection.processed_at, Inspection.total_ms, Inspection.inference_ms,
                                           Inspection.captured_at, Inspection.queue_wait_ms,
                                           Inspection.decode_ms)).all()
            if len(rows) >= target:
                break
            time.sleep(1.0)
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
        engine.dispose()
        end = max(r.captured_at.timestamp() * 1000 + r.total_ms for r in rows)
        start = min(r.captured_at.timestamp() * 1000 + r.total_ms for r in rows)
        return rows, (end - start) / 1000

    try:
        # Offline: the same encoded frames, decoded, prepared and scored here, batch by batch.
        encoded = [files[i % len(files)].read_bytes() for i in range(args.frames)]
        scorer = Scorer(args.model, "auto", runtime=args.runtime)
        results["offline_runtime"] = scorer.runtime
        t0 = time.perf_counter()
        batch_times = []
        for start in range(0, len(encoded), args.batch):
            chunk = encoded[start : start + args.batch]
            b0 = time.perf_counter()
            scorer.score_images([decode_image(b) for b in chunk])
            batch_times.append(time.perf_counter() - b0)
        offline_fps = len(encoded) / (time.perf_counter() - t0)
        results["offline_frames_per_s"] = offline_fps
        del scorer
        print(f"offline batch scoring (decode + prepare + score, batch {args.batch}, {results['offline_runtime']}): "
              f"{offline_fps:.1f} frames/s",
              flush=True)

        results["worker_threads"] = args.threads or "worker default"
        for n in [] if args.latency_only else args.workers:
            for k in args.products:
                rows, seconds = run(f"throughput-{n}-{k}", n, "backlog", args.threads, products=k)
                fps = (len(rows) - 1) / seconds if seconds > 0 else float("nan")
                key = f"pipeline_{n}_workers" + (f"_{k}_products" if k > 1 else "")
                results[f"{key}_frames_per_s"] = fps
                results[f"{key}_ratio_to_offline"] = fps / offline_fps
                single = results.get(f"pipeline_{n}_workers_frames_per_s")
                if k > 1 and single:
                    results[f"{key}_ratio_to_one_product"] = fps / single
                print(f"pipeline, {n} worker(s), {k} product(s): {fps:.1f} frames/s = {fps / offline_fps:.0%} of "
                      "offline", flush=True)
        if args.no_latency:
            raise _Done

        rows, _ = run("latency", 1, "camera", args.threads)
        lat = np.array([r.total_ms for r in rows])
        inference = float(np.median([r.inference_ms for r in rows]))
        results.update(latency_fps=args.fps, latency_frames=len(rows), latency_p50_ms=float(np.percentile(lat, 50)),
                       latency_p99_ms=float(np.percentile(lat, 99)), batch_inference_ms=inference,
                       p99_over_batch_inference=float(np.percentile(lat, 99)) / inference)
        print(f"latency at {args.fps:g} frames/s: p50 {results['latency_p50_ms']:.0f} ms, "
              f"p99 {results['latency_p99_ms']:.0f} ms; one batch's inference {inference:.0f} ms "
              f"(p99 = {results['p99_over_batch_inference']:.1f}x)", flush=True)
        # where a frame's time went (Inspection's latency columns; storing = the rest, to the SQL commit)
        parts = {"waiting (Kafka, batch)": [r.queue_wait_ms for r in rows], "decoding": [r.decode_ms for r in rows],
                 "model": [r.inference_ms for r in rows],
                 "storing": [r.total_ms - r.queue_wait_ms - r.decode_ms - r.inference_ms for r in rows]}
        results["latency_parts_p50_p99_ms"] = {k: [float(np.percentile(v, 50)), float(np.percentile(v, 99))]
                                               for k, v in parts.items()}
        print("  per frame, p50 / p99 ms: " + ", ".join(f"{k} {a:.0f} / {b:.0f}" for k, (a, b) in
                                                        results["latency_parts_p50_p99_ms"].items()), flush=True)
    except _Done:
        pass
    finally:
        for service in reversed(services):
            service.stop()
    results["load_average_end"] = os.getloadavg()
    print()
    print(_table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwritten to {args.out}")
    return 0


def _wait_for_partitions(redis_url: str, topic: str, workers: int, procs: list, timeout_s: float = 180.0) -> None:
    """Until ``workers`` live heartbeats name partitions of ``topic`` (a worker sends its first heartbeat once its
    models are loaded and warmed up); raises RuntimeError when a worker exits or the time is up."""
    import redis

    from linewatch.contracts.live_state import LiveStateReader

    reader = LiveStateReader(redis.Redis.from_url(redis_url))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        owners = [w for w in reader.workers() if w["alive"] and any(str(p).startswith(topic + "/")
                                                                    for p in w.get("partitions") or [])]
        if len(owners) >= workers:
            return
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a worker exited before it got partitions: see its log under the bench's folder")
        time.sleep(0.5)
    raise RuntimeError(f"{workers} worker(s) did not get partitions of {topic} in {timeout_s:.0f} s")


class _Done(Exception):
    """The runs asked for are done (``--no-latency``)."""


def _camera_ids(count: int, partitions: int, per_partition: int = 1) -> list[str]:
    """Camera ids whose frames land on ``count`` different partitions (the producer's default partitioner:
    murmur2 of the key), ``per_partition`` ids each, grouped by partition. Ids picked blindly can share
    partitions, leaving a worker with nothing to do."""
    from kafka.partitioner.default import murmur2

    chosen: dict[int, list[str]] = {}
    i = 0
    while sum(len(v) for v in chosen.values()) < min(count, partitions) * per_partition:
        i += 1
        partition = (murmur2(f"cam-{i}".encode()) & 0x7FFFFFFF) % partitions
        if len(chosen.get(partition, [])) < per_partition and (partition in chosen or len(chosen) < count):
            chosen.setdefault(partition, []).append(f"cam-{i}")
    return [cam for cams in chosen.values() for cam in cams]


def _publish(settings, files, n, fps, camera_cls, source_cls, cameras: int = 1, products=(None,)) -> None:
    """Publish ``n`` frames from ``cameras`` cameras, each on a partition of its own (a camera's frames share
    one partition, so a backlog spread over several cameras is what lets several workers share it); with several
    ``products``, one camera per product on each of those partitions (the products interleave on every one)."""
    import threading

    ids = _camera_ids(cameras, settings.kafka.frames_partitions, per_partition=len(products))
    per_camera = [n // len(ids) + (i < n % len(ids)) for i in range(len(ids))]
    services = [camera_cls(settings, cam, "line-1", source_cls(files[0].parent.parent, loop=True, files=files),
                           fps=fps / len(ids), max_frames=k, product=products[i % len(products)])
                for i, (cam, k) in enumerate(zip(ids, per_camera, strict=True))]
    threads = [threading.Thread(target=c.run, kwargs={"install_signal_handlers": False}) for c in services]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    published = sum(c.counters.published for c in services)
    if published != n:
        raise RuntimeError(f"published {published} of {n} frames")


def _table(r: dict) -> str:
    lines = [f"{'measurement':<52}{'value':>12}", "-" * 64,
             f"{'offline batch scoring, frames/s':<52}{r['offline_frames_per_s']:>12.1f}"]
    for key, value in r.items():
        if key.startswith("pipeline_") and key.endswith("frames_per_s"):
            stem = key.removesuffix("_frames_per_s")
            n, products = key.split("_")[1], (key.split("_")[3] if "_products" in key else "1")
            lines.append(f"{f'pipeline, {n} worker(s), {products} product(s), frames/s':<52}{value:>12.1f}")
            lines.append(f"{'  ratio to offline (target >= 0.85)':<52}{r[stem + '_ratio_to_offline']:>12.2f}")
            if stem + "_ratio_to_one_product" in r:
                ratio = r[stem + "_ratio_to_one_product"]
                lines.append(f"{'  ratio to one product (target >= 0.80)':<52}{ratio:>12.2f}")
    if "latency_p99_ms" in r:
        at = f"at {r['latency_fps']:g} frames/s, ms"
        lines += [f"{'latency p50 ' + at:<52}{r['latency_p50_ms']:>12.0f}",
                  f"{'latency p99 ' + at:<52}{r['latency_p99_ms']:>12.0f}",
                  f"{'inference time of one batch (median), ms':<52}{r['batch_inference_ms']:>12.0f}",
                  f"{'  p99 / batch inference (target <= 3)':<52}{r['p99_over_batch_inference']:>12.2f}"]
    lines.append(f"load average (1 min) at start / end: {r['load_average_start'][0]:.1f} / "
                 f"{r['load_average_end'][0]:.1f} on {os.cpu_count()} CPUs")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
