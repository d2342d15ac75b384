"""The `linewatch` command as a user meets it: clear one-line errors, and real output."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from datasets import bottle


def linewatch(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "linewatch", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data", "/nonexistent/part", "--out", "/tmp/m"], "/nonexistent/part: no such directory"),
        (["eval", "--model", "/tmp", "--data", "{bottle}"], "not a linewatch model directory"),
        (["train", "--data", "{bottle}", "--out", "/tmp/m", "--backbone", "resnet18", "--force",
          "--teacher-weights", "/nowhere/resnet18-f37072fd.pth"], "resnet18-f37072fd.pth"),
        (["train", "--data", "{bottle}", "--out", "/tmp/m", "--device", "cuda"], "no CUDA GPU is visible"),
        (["train", "--data", "{bottle}", "--out", "/tmp/m", "--image-size", "5000"],
         "--image-size: Input should be less than or equal to 1024"),
        (["train", "--data", "{bottle}", "--out", "/tmp/m", "--lr", "0"], "--lr: Input should be greater than 0"),
        (["topics"], "kafka.bootstrap_servers is empty"),
        (["model", "list"], "invalid settings"),
    ],
    ids=["missing-data", "not-a-model", "missing-teacher-weights", "no-gpu", "image-size-limit", "lr-limit",
         "no-broker", "bad-log-level"],
)
def test_user_errors_are_one_clear_line_without_traceback(args, message, tmp_path):
    env = {"LINEWATCH_KAFKA__BOOTSTRAP_SERVERS": "", "LINEWATCH_STATE_DIR": str(tmp_path)}
    if args == ["model", "list"]:
        env["LINEWATCH_LOG_LEVEL"] = "LOUD"
    result = linewatch(*[a.replace("{bottle}", str(bottle())) for a in args], env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")


def test_train_never_overwrites_a_folder_that_is_not_a_model(tmp_path):
    data = tmp_path / "good"
    data.mkdir()
    for name in ("000.png", "001.png", "002.png"):
        (data / name).symlink_to(bottle() / "train" / "good" / name)
    (data / "notes.txt").write_text("keep me")
    result = linewatch("train", "--data", str(data), "--out", str(data), "--epochs", "1")
    assert result.returncode == 2
    assert "not empty and not a model directory" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in data.iterdir()) == ["000.png", "001.png", "002.png", "notes.txt"]


def test_training_names_every_unusable_image_at_once(tmp_path):
    data = tmp_path / "good"
    data.mkdir()
    for name in ("000.png", "001.png", "002.png"):
        (data / name).symlink_to(bottle() / "train" / "good" / name)
    (data / "003.png").write_bytes((bottle() / "train" / "good" / "003.png").read_bytes()[:5000])
    (data / "004.png").write_text("not an image")
    result = linewatch("train", "--data", str(data), "--out", str(tmp_path / "model"), "--epochs", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "2 of 5 images cannot be used" in result.stderr
    assert "003.png: truncated PNG" in result.stderr
    assert "004.png: not a recognised image format\n" in result.stderr


def test_misspelt_settings_are_named_in_a_warning(tmp_path):
    config = tmp_path / "linewatch.toml"
    config.write_text("[detektor]\nmax_batch = 4\n[training]\nepochz = 3\n")
    # The set-up's and the test suite's own variables are not settings, and not misspelt ones either.
    tooling = {"LINEWATCH_WITH_TESTS": "1", "LINEWATCH_WITH_BROWSER": "1", "LINEWATCH_TEST_PROCESSES": "3",
               "LINEWATCH_CASES_ROOT": str(tmp_path)}
    result = linewatch("model", "list", env={"LINEWATCH_CONFIG": str(config), "LINEWATCH_DETECTOR__MAX_BACH": "8",
                                             "LINEWATCH_STATE_DIR": str(tmp_path / "state"), **tooling})
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warned == [
        "warning: LINEWATCH_DETECTOR__MAX_BACH is not a linewatch setting and is ignored",
        f"warning: {config}: detektor is not a linewatch setting and is ignored",
        f"warning: {config}: [training] epochz is not a linewatch setting and is ignored",
    ]


def test_settings_come_from_a_toml_file_and_the_environment(tmp_path):
    config = tmp_path / "linewatch.toml"
    config.write_text('[training]\nepochs = 3\n[kafka]\ntopic_prefix = "plant7"\n')
    code = ("from linewatch.contracts.settings import Settings; s = Settings(); "
            "print(s.training.epochs, s.kafka.frames_topic, s.detector.max_batch)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "LINEWATCH_CONFIG": str(config), "LINEWATCH_DETECTOR__MAX_BATCH": "12"})
    assert out.stdout.split() == ["3", "plant7.frames", "12"]


def test_eval_and_score_on_real_images(quick_model, tmp_path):
    # A small MVTec-layout subset (links to the real files, nothing copied).
    root = tmp_path / "bottle-subset"
    for label, names in (("good", ["000.png", "001.png"]), ("broken_large", ["000.png", "001.png"])):
        (root / "test" / label).mkdir(parents=True)
        for name in names:
            (root / "test" / label / name).symlink_to(bottle() / "test" / label / name)
            if label != "good":
                mask = f"{name[:-4]}_mask.png"
                (root / "ground_truth" / label).mkdir(parents=True, exist_ok=True)
                (root / "ground_truth" / label / mask).symlink_to(bottle() / "ground_truth" / label / mask)
    (root / "train" / "good").mkdir(parents=True)
    (root / "train" / "good" / "000.png").symlink_to(bottle() / "train" / "good" / "000.png")
    # A defect type labelled on image level only: no ground_truth/contamination/ folder.
    (root / "test" / "contamination").mkdir(parents=True)
    for name in ("000.png", "001.png"):
        (root / "test" / "contamination" / name).symlink_to(bottle() / "test" / "contamination" / name)

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    defect = bottle() / "test" / "broken_large" / "000.png"
    with ThreadPoolExecutor(2) as pool:  # two independent commands, each mostly start-up: side by side
        evaluated = pool.submit(linewatch, "eval", "--model", str(quick_model.model_dir), "--data", str(root),
                                "--json", str(tmp_path / "report.json"), "--maps", str(tmp_path / "maps"),
                                "--no-progress")
        scored = pool.submit(linewatch, "score", "--model", str(quick_model.model_dir), str(defect), str(bad))
    result = evaluated.result()
    assert result.returncode == 0, result.stderr
    assert "img AUROC" in result.stdout and "broken_large" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["overall"]["images"] == 6 and report["dataset"]["defective_without_mask"] == 2
    per_type = report["per_defect_type"]
    assert per_type["broken_large"]["image_auroc"] == 1.0
    assert 0.0 <= per_type["contamination"]["image_auroc"] <= 1.0
    assert per_type["contamination"]["pixel_auroc"] is None and per_type["contamination"]["au_pro"] is None
    # Pixel metrics leave out the images whose defect pixels are unknown: overall = good + broken_large.
    assert report["overall"]["pixel_auroc"] == per_type["broken_large"]["pixel_auroc"] > 0.5
    assert report["overall"]["au_pro"] == per_type["broken_large"]["au_pro"]
    assert sorted(p.name for p in (tmp_path / "maps").rglob("*.png")) == ["000.png"] * 3 + ["001.png"] * 3

    result = scored.result()
    assert result.returncode == 1
    good_line, bad_line = (json.loads(line) for line in result.stdout.splitlines())
    assert good_line["verdict"] == "defect" and good_line["normalized_score"] > 1.0 and good_line["regions"]
    assert bad_line == {"path": str(bad), "error": "not_an_image", "detail": bad_line["detail"]}


def test_retrain_wait_says_when_no_trainer_takes_the_job(tmp_path):
    env = {"LINEWATCH_KAFKA__BOOTSTRAP_SERVERS": "", "LINEWATCH_STATE_DIR": str(tmp_path),
           "LINEWATCH_TRAINER__POLL_S": "1"}
    result = linewatch("retrain", "--from-scratch", "--wait", env=env, timeout=60)
    assert result.returncode == 1
    assert "no trainer has taken job 1 in 8 s: is `linewatch trainer` running?" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("camera_id", "line_id", "says"), [("cam\x01", "line-1", "--camera-id"),
                                                            ("cam-1", "L" * 129, "--line-id has 129 characters")])
def test_ingest_refuses_ids_no_store_can_hold(camera_id, line_id, says, tmp_path):
    result = linewatch("ingest", "--camera-id", camera_id, "--line-id", line_id, "--source", str(tmp_path),
                       env={"LINEWATCH_STATE_DIR": str(tmp_path)})
    assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr


def test_score_refuses_a_jpeg_corrupt_mid_stream(quick_model):
    from datasets import field_case

    corrupt = field_case("c02_corrupt_mid_jpeg") / "corrupt_mid_128x128.jpg"
    result = linewatch("score", "--model", str(quick_model.model_dir), str(corrupt))
    assert result.returncode == 1  # an image that could not be scored; no verdict is printed for it
    line = json.loads(result.stdout)
    assert line["error"] == "corrupt" and "Corrupt JPEG data" in line["detail"] and "verdict" not in line


def test_children_die_with_the_process_that_started_them():
    """A ``linewatch up`` killed with SIGKILL leaves no broker, Redis or worker behind (PR_SET_PDEATHSIG)."""
    import time

    script = ("import subprocess, time\n"
              "from linewatch.cli.embedded import die_with_parent\n"
              "child = subprocess.Popen(['sleep', '60'], preexec_fn=die_with_parent, start_new_session=True)\n"
              "print(child.pid, flush=True)\n"
              "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait(10)

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(child)


def test_a_command_names_its_state_folder_and_says_so_when_it_starts_a_new_record(tmp_path):
    env = {**os.environ, "LINEWATCH_STATE_DIR": str(tmp_path / "elsewhere")}
    env.pop("LINEWATCH_DATABASE__URL", None)
    first = linewatch("model", "list", env=env)
    assert first.returncode == 0
    assert f"note: no record in {tmp_path / 'elsewhere'} (state folder): a new, empty one is created" in first.stderr
    second = linewatch("model", "list", env=env)
    assert f"state folder: {tmp_path / 'elsewhere'}" in second.stderr and "note:" not in second.stderr
    assert "state folder" not in linewatch("--help", env=env).stderr  # only commands that open the record
