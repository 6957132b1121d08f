"""Scaling past one process: two `asr serve` servers behind nginx on loopback, with the example configuration
deploy/nginx-asr.conf (only its ports rewritten). Streams through the proxy get their offline transcripts,
and both servers take streams. Skips where nginx is missing (`make test-proxy` installs it)."""
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("websockets")
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make test-proxy installs it)")

from test_serve import Server, reference, run, wave  # noqa: E402,F401
from convformer.asr.client import stream_samples  # noqa: E402

CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx-asr.conf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_servers_behind_nginx(tmp_path, reference):  # noqa: F811
    servers = [Server(), Server()]
    port = free_port()
    conf = CONF.read_text().replace("127.0.0.1:8765", f"127.0.0.1:{servers[0].port}") \
        .replace("127.0.0.1:8766", f"127.0.0.1:{servers[1].port}").replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    (tmp_path / "nginx-asr.conf").write_text(conf)
    (tmp_path / "tmp").mkdir()
    proxy = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", "nginx-asr.conf"], stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert proxy.poll() is None, proxy.stderr.read()
                time.sleep(0.1)
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
        assert 'id="toggle"' in page
        audios = [wave(i) for i in range(4)]
        results = run(*(stream_samples(f"ws://127.0.0.1:{port}/", a, realtime=True, block_ms=100) for a in audios))
        assert [r["final"]["text"] for r in results] == [reference(a) for a in audios]
        served = [json.loads(urllib.request.urlopen(f"http://127.0.0.1:{s.port}/stats", timeout=10).read())["served"]
                  for s in servers]
        assert sum(served) == 4 and min(served) >= 1       # both servers took streams
    finally:
        proxy.terminate()
        proxy.wait(10)
        for s in servers:
            s.stop()
