"""Screenshots of the demo's dashboards in a real browser, for the README.

    python docs/screenshots.py [--logdir DIR] [--out docs/images]

Runs the demo (``examples/demo.py``) and the digits example with every opt-in view
(``examples/train_digits.py``) into a fresh log directory unless ``--logdir`` names one,
serves it with TensorBoard on 127.0.0.1, and has headless Chromium (installed from the Debian
packages with apt-get when missing) capture each view as a PNG in ``--out``. Rerun it whenever
what the callbacks log changes. About three minutes on 2 CPU cores, most of it the runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

VIEWS = {
    "filters": "images&tagFilter=%5Efilters%2F",
    "gradcam": "images&tagFilter=%5Egradcam%2F&regexInput=%5Ephotos%2F",
    "deconv": "images&tagFilter=%5Edeconv%2Fmodel.features.4%24&regexInput=%5Ephotos%2F",
    "evolution": "images&tagFilter=%5Eevolution%2Fmodel.features.0%24&regexInput=%5Ephotos%2F",
    "health": "custom_scalars",
    "alerts": "text&tagFilter=%5Ealerts",
    "embedding": "images&tagFilter=%5Eembedding%2F&regexInput=%5Edigits%2F",
    "projector": "projector",
    "top_patches": "images&tagFilter=%5Etop_patches%2F&regexInput=%5Edigits%2F",
    "feature_vis": "images&tagFilter=%5Efeature_vis%2F&regexInput=%5Edigits%2F",
    "trust": "scalars&tagFilter=%5E(sanity%7Cstability)%2Fgradcam&regexInput=%5Ephotos%2F",
    "trust_table": "text&tagFilter=%5Egradcam%2F.*targets&regexInput=%5Ephotos%2F",
}
"""PNG name -> TensorBoard URL fragment (dashboard, tag filter, run filter)."""

RUNS = (
    ["examples/demo.py"],
    # the opt-in views: the projector, patches and feature visualization of the digits
    ["examples/train_digits.py", "--epochs", "6"],
)
"""The example runs whose logs the screenshots show, all into one log directory."""


SCREENSHOT_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    "--window-size=1400,1000",
    "--virtual-time-budget=15000",
)


def serve_on(port: int) -> list[str]:
    """TensorBoard's arguments to serve on loopback only, every run read whole before it serves
    (a server that still loads shows cards of an earlier step, or none: the README's Grad-CAM
    and deconv shots once showed a broken image)."""
    return [
        "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false",
        "--reload_interval", "0", "--reload_task", "blocking",
    ]  # fmt: skip


def chromium() -> str:
    """The Chromium executable, installed from the Debian packages when missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*sudo, "apt-get", "install", "-y", "chromium"], check=True)
    return shutil.which("chromium") or sys.exit("apt-get installed no chromium executable")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.read() not in (b"", b"{}", b"[]"):
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", type=Path, help="logs to show; default: run the demo")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args(argv)
    browser = chromium()
    logdir = args.logdir or Path(tempfile.mkdtemp(prefix="lightning-viz-demo-"))
    if args.logdir is None:
        for run in RUNS:
            subprocess.run([sys.executable, *run, "--logdir", str(logdir)], check=True, cwd=ROOT)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), *serve_on(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/data/plugin/images/tags")
        args.out.mkdir(parents=True, exist_ok=True)
        for name, fragment in VIEWS.items():
            png = args.out / f"{name}.png"
            subprocess.run(
                [browser, *SCREENSHOT_FLAGS, f"--screenshot={png}", f"{base}/#{fragment}"],
                check=True,
                capture_output=True,
            )
            print(f"{png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
