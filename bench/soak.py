"""Soak benchmark: ``linewatch up`` on its embedded defaults for a long run, with every process's memory
sampled over time, to show that nothing grows without bound (issue 13: a broker that grew to 9.5 GB).

    python bench/soak.py [--minutes 30] [--fps 10] [--warmup-minutes 5] [--sample-s 10] [--model DIR]
                         [--frames-retention-mb MB] [--frames-retention-min MIN] [--segment-mb MB]

Runs ``linewatch up`` (embedded Apache Kafka, redis-server, SQLite, dashboard, trainer, one camera
looping over the bottle test images) in a fresh state folder. Once the camera starts, every
``--sample-s`` it reads the resident set size (RSS, ``/proc/<pid>/status`` VmRSS) of every process
``up`` started, each service counted with its own child processes, and the disk use of the broker's
log directory. It prints, per service, the peak RSS during the warm-up and after it, the last value and
the growth after warm-up; then a per-minute series. The ``--frames-*`` options scale the frame topic's
retention down (per partition; one camera writes one partition) to see it act in a short run.
Without ``--model`` the default model is trained first (not part of the measured time).
Writes ``bench/results/soak.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
PAGE = os.sysconf("SC_PAGE_SIZE")


def _ppid_map() -> dict[int, int]:
    """pid -> parent pid of every process (from /proc/<pid>/stat; the name field may hold spaces)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return parents


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _service_name(pid: int) -> str:
    """A service's name from its command line: kafka, redis, worker-N, camera, trainer, dashboard."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return f"pid {pid}"
    if "kafka.Kafka" in argv:
        return "kafka (broker)"
    if argv and argv[0].startswith(("redis-server", "/usr/bin/redis-server")):  # Redis rewrites its title
        return "redis"
    if any("streamlit" in a for a in argv):
        return "dashboard"
    if "linewatch" in argv:
        command = argv[argv.index("linewatch") + 1] if argv.index("linewatch") + 1 < len(argv) else "?"
        return {"detect": "worker", "ingest": "camera"}.get(command, command)
    return Path(argv[0]).name if argv else f"pid {pid}"


_NAMES: dict[int, str] = {}  # a child keeps the name it had when first seen (the dashboard execs streamlit)


def sample(up_pid: int) -> dict[str, float]:
    """RSS (MiB) of ``up`` itself and of each process it started, with that process's descendants."""
    parents = _ppid_map()
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)

    def tree(pid: int) -> list[int]:
        out, stack = [], [pid]
        while stack:
            current = stack.pop()
            out.append(current)
            stack.extend(children.get(current, []))
        return out

    rss = {"up (supervisor)": _rss_mib(up_pid)}
    for child in sorted(children.get(up_pid, [])):
        if child not in _NAMES:
            name = _service_name(child)
            _NAMES[child] = f"{name}-{child}" if name in _NAMES.values() else name  # several workers
        rss[_NAMES[child]] = sum(_rss_mib(p) for p in tree(child))
    return rss


def disk_mib(path: Path) -> float:
    """Disk use (allocated blocks, as ``du``) under ``path``, MiB; sparse index files count what they use."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total / 2**20


def inspected(state: Path) -> int | None:
    try:
        with sqlite3.connect(f"file:{state / 'linewatch.db'}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT count(*) FROM inspections").fetchone()[0])
    except sqlite3.Error:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="measured duration after the camera starts")
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--warmup-minutes", type=float, default=None, help="default: a sixth of the run, at most 5")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--model", type=Path, default=None, help="a model directory (default: train the default)")
    parser.add_argument("--state", type=Path, default=None, help="state folder (default: a fresh temporary one)")
    parser.add_argument("--frames-retention-mb", type=int, default=None, help="frame topic retention.bytes, MiB")
    parser.add_argument("--frames-retention-min", type=float, default=None, help="frame topic retention.ms, min")
    parser.add_argument("--segment-mb", type=int, default=None, help="frame topic segment.bytes, MiB")
    args = parser.parse_args()
    warmup_s = 60 * (args.warmup_minutes if args.warmup_minutes is not None else min(5.0, args.minutes / 6))
    state = (args.state or Path(tempfile.mkdtemp(prefix="linewatch-soak-"))).resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEWATCH_") or k == "LINEWATCH_DATA_ROOT"}
    env["LINEWATCH_STATE_DIR"] = str(state)
    scaled = {"BYTES": args.frames_retention_mb and args.frames_retention_mb * 2**20,
              "MS": args.frames_retention_min and int(args.frames_retention_min * 60_000),
              "SEGMENT_BYTES": args.segment_mb and args.segment_mb * 2**20}
    env.update({f"LINEWATCH_KAFKA__FRAMES_RETENTION__{k}": str(v) for k, v in scaled.items() if v})
    from linewatch.cli.embedded import free_port

    command = [sys.executable, "-m", "linewatch", "up", "--fps", str(args.fps), "--dashboard-port", str(free_port())]
    if args.model:
        command += ["--model", str(args.model)]
    print(f"state: {state}\n{' '.join(command)}", flush=True)
    up_log = open(state.parent / f"{state.name}-up.log", "wb")  # noqa: SIM115 -- closed at the end
    up = subprocess.Popen(command, env=env, stdout=up_log, stderr=subprocess.STDOUT)
    samples: list[dict] = []
    try:
        while not (state / "logs" / "camera.log").exists():
            if up.poll() is not None:
                print(f"linewatch up exited with code {up.returncode} before the camera started; see {up_log.name}")
                return 1
            time.sleep(1)
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < args.minutes * 60:
            if up.poll() is not None:
                print(f"linewatch up exited with code {up.returncode} after {elapsed:.0f} s; see {up_log.name}")
                break
            samples.append({"t_s": round(elapsed, 1), "rss_mib": sample(up.pid),
                            "kafka_log_dir_mib": round(disk_mib(state / "kafka" / "data"), 1),
                            "inspected": inspected(state)})
            time.sleep(args.sample_s)
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(180)
            except subprocess.TimeoutExpired:
                up.kill()
        up_log.close()
    report = summarise(samples, warmup_s)
    report.update(minutes=args.minutes, fps=args.fps, warmup_s=warmup_s, state=str(state), up_exit=up.returncode,
                  frames_retention=scaled, samples=samples)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(report, indent=1))
    print_report(report)
    return 0 if up.returncode in (0, 130) and samples and samples[-1]["t_s"] >= args.minutes * 60 - 2 * args.sample_s \
        else 1


def summarise(samples: list[dict], warmup_s: float) -> dict:
    """Per service: peak RSS in the warm-up and after it, the last value, and the growth after warm-up (MiB)."""
    names = list(dict.fromkeys(name for s in samples for name in s["rss_mib"]))
    services = {}
    for name in names:
        warm = [s["rss_mib"].get(name, 0) for s in samples if s["t_s"] < warmup_s]
        after = [s["rss_mib"].get(name, 0) for s in samples if s["t_s"] >= warmup_s]
        services[name] = {"peak_warmup": round(max(warm, default=0), 1), "peak_after": round(max(after, default=0), 1),
                          "last": round(samples[-1]["rss_mib"].get(name, 0), 1),
                          "growth_after_warmup": round(max(after, default=0) - max(warm, default=0), 1)}
    disk_after = [s["kafka_log_dir_mib"] for s in samples if s["t_s"] >= warmup_s]
    return {"services": services,
            "kafka_log_dir_mib": {"peak": max((s["kafka_log_dir_mib"] for s in samples), default=0),
                                  "peak_after_warmup": max(disk_after, default=0),
                                  "last": samples[-1]["kafka_log_dir_mib"] if samples else 0}}


def print_report(report: dict) -> None:
    samples = report["samples"]
    print(f"\nsoak: {samples[-1]['t_s'] / 60 if samples else 0:.1f} min at {report['fps']} frames/s, "
          f"warm-up {report['warmup_s'] / 60:.1f} min, {len(samples)} samples; RSS in MiB")
    print(f"{'service':<18} {'peak warm-up':>12} {'peak after':>11} {'last':>8} {'growth':>8}")
    for name, s in report["services"].items():
        print(f"{name:<18} {s['peak_warmup']:>12.0f} {s['peak_after']:>11.0f} {s['last']:>8.0f} "
              f"{s['growth_after_warmup']:>+8.0f}")
    d = report["kafka_log_dir_mib"]
    print(f"broker log dir: peak {d['peak']:.0f} MiB, peak after warm-up {d['peak_after_warmup']:.0f}, "
          f"last {d['last']:.0f}")
    print(f"\n{'min':>5} {'inspected':>10} {'broker RSS':>11} {'log dir MiB':>12} {'total RSS':>10}")
    next_t = 0.0
    for s in samples:
        if s["t_s"] >= next_t:
            broker = s["rss_mib"].get("kafka (broker)", 0)
            print(f"{s['t_s'] / 60:5.1f} {s['inspected'] or 0:>10} {broker:>11.0f} {s['kafka_log_dir_mib']:>12.0f} "
                  f"{sum(s['rss_mib'].values()):>10.0f}")
            next_t += 60


if __name__ == "__main__":
    sys.exit(main())
