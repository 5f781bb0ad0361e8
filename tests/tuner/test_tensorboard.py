"""What a person sees in TensorBoard over an experiment: one run per trial, named by its
settings, with the trainer's scalars against the step and an HParams view of the trial
settings and val_loss / val_top1.

The slow test runs a real two-trial sweep, starts a real TensorBoard on it, asks its
HTTP API, and loads the scalars and HParams pages in headless Chromium (skipped, with
the reason, where Chromium is not installed: `apt-get install chromium`).
"""

import base64
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from ray.tune.experiment import Trial

from search_spaces import Preset
from tuner.raytune.callbacks import trial_dirname
from tuner.jobs.sweep import SweepOptions, run_sweep

SHOWN_FIRST = ["batch_size", "epochs", "lr", "seed", "variant"]  # TensorBoard orders them by name


def trial(config, trial_id="abc12_00003"):
    return Trial("train_trial", config=config, trial_id=trial_id, stub=True)


def test_a_trial_directory_and_so_its_run_is_named_by_its_settings():
    config = {"variant": "nano", "epochs": 0.125, "lr": 0.4, "batch_size": 128, "seed": 0, "dataset": "digits"}
    assert trial_dirname(trial(config)) == "nano-e0.125-lr0.4-b128-s0-abc12_00003"
    # Multipliers in the label or the config, as the ledger spells cells.
    assert trial_dirname(trial(dict(config, variant="nano-w0.5"))) == "nano-w0.5-e0.125-lr0.4-b128-s0-abc12_00003"
    assert trial_dirname(trial(dict(config, width_mult=2.0, depth_mult=0.5, lr=1e-5))) == \
        "nano-w2-d0.5-e0.125-lr1e-05-b128-s0-abc12_00003"
    # Settings the config lacks are left out; without a variant or LR, the id alone.
    assert trial_dirname(trial({"variant": "F0", "lr": 0.1})) == "F0-lr0.1-abc12_00003"
    assert trial_dirname(trial({"reports": 3})) == "abc12_00003"


# ---------------------------------------------------------------- a real sweep, TensorBoard and a browser


def tiny_preset() -> Preset:
    """nano on 256 digits at 16px, batch 64: 4 steps a run, evaluated at steps 2 and 4; two LRs."""
    return Preset(
        name="tiny", summary="a test study", command="python -m tuner.sweep --preset tiny", cost="a minute",
        variants=("nano",), epochs=(1,), lr_exponents=(1, 2), batch_size=64, dataset="digits", resolution=16,
        overrides={"evals_per_run": 2, "max_train_examples": 256, "max_eval_examples": 64, "num_workers": 1},
        num_samples=2, grace_period=1.0,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def tensorboard():
    """Starts `python -m tensorboard.main` over a log directory; stops it (by its pid) afterwards."""
    started = []

    def start(logdir: Path) -> str:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
             "--port", str(port), "--reload_interval", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"TensorBoard exited with {process.returncode}: {process.stderr.read()[-2000:]}")
            try:
                get(f"{url}/data/runs")
                return url
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        pytest.fail("TensorBoard did not answer within 120s")

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(fetch, ready, what: str, timeout: float = 60.0):
    """`fetch()` until `ready(value)` (TensorBoard loads event files in the background)."""
    deadline = time.monotonic() + timeout
    value = fetch()
    while not ready(value) and time.monotonic() < deadline:
        time.sleep(1)
        value = fetch()
    assert ready(value), f"{what}: {value}"
    return value


# Every text of the page, shadow roots included (TensorBoard's HParams dashboard lives
# in them, which `chromium --dump-dom` leaves out), one text node a line.
PAGE_TEXT = r"""(() => {
  const parts = [];
  const walk = (node) => {
    if (node.nodeName === 'SCRIPT' || node.nodeName === 'STYLE') return;
    if (node.nodeType === Node.TEXT_NODE) {
      const text = node.textContent.trim();
      if (text) parts.push(text);
      return;
    }
    if (node.shadowRoot) walk(node.shadowRoot);
    for (const child of node.childNodes) walk(child);
  };
  walk(document.body);
  return parts.join('\n');
})()"""


class HeadlessChromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`)."""

    def __init__(self, browser: str, profile: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def protocol_fds():  # in the child: Chromium reads commands on fd 3, answers on fd 4
            r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.process = subprocess.Popen(
            [browser, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
             f"--user-data-dir={profile}", "--remote-debugging-pipe", "--window-size=1600,1000", "about:blank"],
            close_fds=False, preexec_fn=protocol_fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._pending = b""
        self._id = 0

    def call(self, method: str, session: str | None = None, **params):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._pending:
                chunk = os.read(self._from_browser, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"Chromium closed its DevTools pipe (exit status {self.process.poll()})")
                self._pending += chunk
            raw, self._pending = self._pending.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def open(self, url: str) -> str:
        """A new tab on `url`; its session id."""
        target = self.call("Target.createTarget", url=url)["targetId"]
        return self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def text_when(self, session: str, ready, timeout: float = 60.0) -> str:
        """The page's text once `ready(text)` holds (or at the timeout, for the assertion to show)."""
        deadline = time.monotonic() + timeout
        while True:
            # Before the page has a body the script throws, and there is no value yet.
            text = self.call("Runtime.evaluate", session, expression=PAGE_TEXT, returnByValue=True)["result"].get(
                "value") or ""
            if ready(text) or time.monotonic() > deadline:
                return text
            time.sleep(0.5)

    def screenshot(self, session: str, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", session)["data"]))

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture
def chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): the browser half of this test needs it")
    started = HeadlessChromium(browser, tmp_path / "chromium-profile")
    yield started
    started.close()


@pytest.mark.slow
def test_tensorboard_shows_each_trial_once_by_its_settings_with_its_hparams(tmp_path, monkeypatch, tensorboard,
                                                                            request):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax-cache"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    result = run_sweep(SweepOptions(grid=True, max_concurrent=1, num_cpus=2, storage=str(tmp_path / "results"),
                                    ledger=str(tmp_path / "ledger"), name="tb"),
                       preset=tiny_preset(), log=lambda *a: None)
    experiment = Path(result.path)
    trials = {json.loads((p / "params.json").read_text())["lr"]: p.name
              for p in experiment.iterdir() if (p / "params.json").is_file()}
    assert len(trials) == 2
    for lr, name in trials.items():
        assert re.fullmatch(rf"nano-e1-lr{lr:g}-b64-s0-\w+", name)
        # Tune's own logs stay for what reads them; its TensorBoard events do not.
        assert (experiment / name / "result.json").is_file() and (experiment / name / "progress.csv").is_file()

    url = tensorboard(experiment)
    # (a) The HTTP API: one run per trial, named by its directory, with the trainer's tags against its steps.
    runs = wait_for(lambda: get(f"{url}/data/runs"), lambda r: len(r) >= 2, "runs")
    assert sorted(runs) == sorted(trials.values())
    tags = get(f"{url}/data/plugin/scalars/tags")
    assert sorted(tags) == sorted(trials.values())
    for run_tags in tags.values():
        assert {"val_loss", "val_top1", "train_loss", "lr", "images_seen"} <= set(run_tags)
        assert not [t for t in run_tags if t.startswith("ray/")]
        assert "iterations_since_restore" not in run_tags and "should_checkpoint" not in run_tags
    name = trials[max(trials)]
    points = get(f"{url}/data/plugin/scalars/scalars?run={urllib.parse.quote(name)}&tag=val_loss")
    assert [step for _, step, _ in points] == [2, 4]  # the trainer's steps: 4 a run, evaluated twice

    # The HParams view: the settings that tell trials apart first (TensorBoard orders those
    # by name and ticks the first five), whole numbers as text, the two validation metrics.
    hparams = get(f"{url}/data/plugin/hparams/experiment", {"experimentName": ""})
    columns = [(h["name"], h["type"]) for h in hparams["hparamInfos"]]
    assert [c for c, _ in columns[:5]] == SHOWN_FIRST and all(h["differs"] for h in hparams["hparamInfos"][:5])
    assert sorted(c for c, _ in columns[5:]) == ["dataset", "depth_mult", "width_mult"]
    types = dict(columns)
    assert types["batch_size"] == types["seed"] == types["variant"] == "DATA_TYPE_STRING"
    assert types["lr"] == types["epochs"] == "DATA_TYPE_FLOAT64"
    assert [m["name"]["tag"] for m in hparams["metricInfos"]] == ["val_loss", "val_top1"]
    groups = get(f"{url}/data/plugin/hparams/session_groups", {
        "experimentName": "", "startIndex": 0, "sliceSize": 10,
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [{"hparam": h} for h, _ in columns] + [{"metric": {"tag": "val_loss"}}]})
    assert groups["totalSize"] == 2
    by_name = {g["name"]: g for g in groups["sessionGroups"]}
    assert sorted(by_name) == sorted(trials.values())  # one row per trial, its Trial ID its run name
    assert by_name[name]["hparams"] == {"variant": "nano", "epochs": 1.0, "lr": max(trials), "batch_size": "64",
                                        "seed": "0", "width_mult": 1.0, "depth_mult": 1.0, "dataset": "digits[256]"}

    # (b) What a person sees in the browser.
    chromium = request.getfixturevalue("chromium")
    page = chromium.open(f"{url}/#timeseries")
    text = chromium.text_when(page, lambda t: all(n in t for n in trials.values()) and "val_loss" in t)
    chromium.screenshot(page, tmp_path / "scalars.png")
    lines = text.splitlines()
    for run in trials.values():
        assert run in lines  # each trial once in the runs list, by its settings
    assert "val_loss" in lines and "val_top1" in lines
    assert not [line for line in lines if "ray/tune" in line or "/tensorboard" in line]

    page = chromium.open(f"{url}/#hparams")
    text = chromium.text_when(page, lambda t: "Trial ID" in t and all(n in t for n in trials.values()))
    chromium.screenshot(page, tmp_path / "hparams.png")
    lines = text.splitlines()
    # The table's header: Trial ID, the five ticked settings, then the metrics.
    header = lines.index("Trial ID")
    assert lines[header + 1:header + 9] == ["Show Metrics", *SHOWN_FIRST, "val_loss", "val_top1"]
    row = lines.index(name)
    # Its row: batch size and seed as whole numbers (a number would read 64.000 and 0.0000),
    # epochs and LR to TensorBoard's five digits.
    assert lines[row + 1:row + 6] == ["64", "1.0000", f"{max(trials):#.5g}", "0", "nano"]
    assert "64.000" not in lines and "0.0000" not in lines
