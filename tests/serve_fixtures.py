"""A real `numoe serve` process on a free port, and an in-process app for request checks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager


@contextmanager
def server_process(model: str, *args: str, env: dict | None = None):
    """Start `numoe serve -m model --port 0 args...`; yield its base URL once /health is 200."""
    cmd = [sys.executable, "-m", "numoe", "serve", "-m", model, "--port", "0", "-t", "2", *args]
    e = {**os.environ, **(env or {})}
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=e, text=True)
    lines = []
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None:
            line = p.stderr.readline()
            if not line:
                raise RuntimeError("numoe serve exited:\n" + "".join(lines))
            lines.append(line)
            m = re.search(r"listening on (http://\S+:\d+)", line)
            if m:
                url = m.group(1)
            if time.monotonic() > deadline:
                raise TimeoutError("numoe serve did not start:\n" + "".join(lines))
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or p.poll() is not None:
                raise TimeoutError("numoe serve never became healthy:\n" + "".join(lines))
            time.sleep(0.05)
        p.lines = lines
        yield p, url
    finally:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        p.stderr.close()


def metric(text: str, name: str) -> float:
    """The value of an unlabelled Prometheus sample `name` in `text`."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)
