"""The browser demo (runtime/js/demo) in headless Chromium: a wav played through Chromium's fake
microphone reaches the JavaScript runtime on the page (onnxruntime-web), which detects "hey heron"
in a clip that says it and nothing in a clip of other speech. The page reports each detection and how
much audio it has heard to the local test server (?report=...)."""
import http.server
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from heron.runtime.keyword_file import write_keyword_file
from heron.runtime.spotter import KeywordSpotter

JS = Path(__file__).resolve().parents[1] / "runtime" / "js"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
ORT_WEB = JS / "node_modules" / "onnxruntime-web" / "dist"

pytestmark = pytest.mark.skipif(CHROMIUM is None or not ORT_WEB.is_dir(),
                                reason="needs Chromium (apt-get install chromium) and runtime/js/node_modules/onnxruntime-web "
                                       "(make setup installs both)")


class _Server:
    """Serves /js (runtime/js), /bundle (a mobile bundle) and /kw (keyword files); records POSTs to /report."""

    def __init__(self, roots: dict[str, Path]):
        reports = self.reports = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                              ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm"}

            def translate_path(self, path):
                top, _, rest = path.split("?")[0].lstrip("/").partition("/")
                root = roots.get(top)
                target = (root / rest).resolve() if root is not None else None
                if target is None or (target != root.resolve() and root.resolve() not in target.parents):
                    return "/nonexistent"
                return str(target)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                reports.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from heron.export.kws_mobile import write_mobile_bundle

    d = tmp_path_factory.mktemp("web")
    mobile = write_mobile_bundle(None, d / "mobile")
    full = KeywordSpotter.load()
    kwdir = d / "kw"
    kwdir.mkdir()
    write_keyword_file(full.keyword_file(full.enroll("hey heron")), kwdir / "hey_heron.kw")
    server = _Server({"js": JS, "bundle": mobile, "kw": kwdir})
    yield d, server
    server.close()


def _play(d: Path, server: _Server, audio: np.ndarray, name: str) -> tuple[list[dict], float]:
    """Loop `audio` (16 kHz) through the fake microphone until the page has heard it twice over (the first
    pass may start before the page listens) -> (detections, seconds of audio the page heard)."""
    import soundfile as sf

    wav = d / f"{name}.wav"
    sf.write(wav, audio, 16000, subtype="PCM_16")
    server.reports.clear()
    url = f"http://127.0.0.1:{server.port}/js/demo/?bundle=/bundle&kw=/kw/hey_heron.kw&autostart&report=/report"
    profile = d / f"profile-{name}"
    proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             f"--user-data-dir={profile}", "--use-fake-ui-for-media-stream",
                             "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}",
                             "--autoplay-policy=no-user-gesture-required", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    need = 2 * len(audio) / 16000 + 1.0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            heard = max([r["audio_s"] for r in server.reports if "audio_s" in r], default=0.0)
            if heard >= need:
                break
            time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait()
    dets = [r for r in server.reports if "keyword" in r]
    heard = max([r["audio_s"] for r in server.reports if "audio_s" in r], default=0.0)
    return dets, heard


def test_browser_detects_the_keyword_from_the_fake_microphone(site):
    from heron.synth import test_clip

    d, server = site
    audio, _, _ = test_clip("hey heron", seed=3)
    dets, heard = _play(d, server, audio, "keyword")
    assert heard >= 2 * len(audio) / 16000, f"the page heard only {heard:.1f} s of audio"
    assert dets and all(x["keyword"] == "hey heron" for x in dets), dets
    assert len(dets) <= heard / (len(audio) / 16000) + 1  # one detection per pass of the clip at most
    assert any([w["word"] for w in x["words"]] == ["hey", "heron"] for x in dets)  # word times on the page
    assert all(x["end_s"] - x["start_s"] < 2.0 for x in dets)


def test_browser_stays_quiet_on_other_speech(site):
    from heron.synth import test_clip

    d, server = site
    audio, _, _ = test_clip("good morning everyone", seed=6)
    dets, heard = _play(d, server, audio, "other")
    assert heard >= 2 * len(audio) / 16000, f"the page heard only {heard:.1f} s of audio"
    assert dets == []
