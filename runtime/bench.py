"""`heron kws bench`: what the spotter costs on this machine, measured through its public API (numpy +
onnxruntime only, so it runs wherever the runtime does). Results go to BENCHMARKS.md; tests never assert them."""
from __future__ import annotations

import time


def spotter_bench(model: str | None, real_speech: str, seconds: int = 120, long_stream: str | None = None) -> dict:
    """The spotter's speed (RTF at 1 thread, encoder alone and whole spotter with 1 and 10 keywords, on
    real speech and real noise), enrollment latency, modules skipped by closed gates, bundle size; with
    `long_stream`, a long wav streamed through one stream with its resident memory. -> a JSON-able report."""
    import glob

    import numpy as np
    import soundfile as sf

    from heron.runtime.audio import AudioFile
    from heron.runtime.manifest import GATE_NAMES
    from heron.runtime.metrics import machine
    from heron.runtime.spotter import KeywordSpotter

    if long_stream:
        AudioFile(long_stream)  # refused before the benchmark runs, not after it
    shared = real_speech
    speech_files = sorted(glob.glob(f"{shared}/sentences/*.wav")) + sorted(glob.glob(f"{shared}/keywords/*/*.wav"))[:40]
    noise_files = sorted(glob.glob(f"{shared}/noise/*.wav"))
    if not speech_files or not noise_files:
        raise FileNotFoundError(f"benchmark audio not found under {shared} (pass --real-speech)")
    speech = np.concatenate([sf.read(f, dtype="float32")[0] for f in speech_files])[: 16000 * seconds]
    noise = np.concatenate([sf.read(f, dtype="float32")[0] for f in noise_files])[: 16000 * seconds]
    res = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "threads": 1,
           "audio_s": {"speech": round(len(speech) / 16000, 1), "noise": round(len(noise) / 16000, 1)}}

    def rtf(fn, audio) -> float:
        t0 = time.perf_counter()
        fn(audio)
        return round((time.perf_counter() - t0) / (len(audio) / 16000), 5)

    seen = set()
    for kw in (dict(skip_gates=False), dict(skip_gates=False, int8=True), dict(skip_gates=True),
               dict(skip_gates=True, int8=True)):
        sp = KeywordSpotter.load(model, threads=1, speech_gate=kw["skip_gates"], **kw)  # a gate needs the modules
        name = f"{'modular_skipping' if sp.modular else 'single_graph'}_{'int8' if sp.int8 else 'fp32'}"
        if name in seen:  # e.g. an int8-only bundle: fp32 requests fall back to int8
            continue
        seen.add(name)
        res[f"rtf_encoder_{name}"] = {k: rtf(sp.encode, a) for k, a in (("speech", speech), ("noise", noise))}
        if sp.modular is not None:  # each stream counts what its closed gates skipped
            for label, audio in (("speech", speech), ("noise", noise)):
                st = sp.stream([])
                st.accept(audio)
                res[f"modules_skipped_{label}"] = dict(zip(GATE_NAMES, np.round(st.skipped_fraction, 3).tolist()))
    sp = KeywordSpotter.load(model, threads=1)  # the default configuration
    words = ["hey heron", "view glass", "snowboy", "okay computer", "lights on", "lights off",
             "stop music", "next track", "call mom", "volume up"]
    for n_kw in (1, 10):
        sp.keywords.clear()
        for w in words[:n_kw]:
            sp.enroll(w)

        def run(audio):
            st = sp.stream()
            for i in range(0, len(audio), 1600):
                st.accept(audio[i:i + 1600])

        res[f"rtf_spotter_{n_kw}kw"] = {k: rtf(run, a) for k, a in (("speech", speech), ("noise", noise))}
    sp = KeywordSpotter.load(model)
    sp.enroll("warm up")  # loads the dictionary and g2p model once
    times = []
    for w in ["hey heron", "ok jarvis", "lights on please", "snowboy", "zorblax activate"]:
        t0 = time.perf_counter()
        kw = sp.enroll(w)
        times.append((time.perf_counter() - t0) * 1000)
        sp.unenroll(kw.name)
    res["enroll_ms_median"] = round(float(np.median(times)), 2)
    res["enroll_ms_max"] = round(float(np.max(times)), 2)
    man = sp.bundle.manifest
    res["bundle_mb"] = {k: round(v.bytes / 1e6, 2) for k, v in man.files.items()}
    if long_stream:
        res["long_stream"] = long_stream_report(model, long_stream)
    return res


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def long_stream_report(model: str | None, path: str) -> dict:
    """Stream a long wav in 100 ms pieces through one stream; resident memory every 10 minutes."""
    from heron.runtime.audio import AudioFile
    from heron.runtime.spotter import KeywordSpotter

    audio = AudioFile(path)  # any rate and channels; a missing or broken file is one line
    sp = KeywordSpotter.load(model, threads=1)
    sp.enroll("hey heron")
    st = sp.stream(sample_rate=audio.sample_rate)
    rss, done, dets = [], 0, 0
    step = audio.sample_rate // 10
    t0 = time.perf_counter()
    for block in audio.blocks(0.1):
        dets += len(st.accept(block))
        done += len(block)
        if done % (audio.sample_rate * 600) < step:
            rss.append(round(rss_mb(), 1))
    secs = done / audio.sample_rate
    return {"audio_minutes": round(secs / 60, 1), "rtf": round((time.perf_counter() - t0) / secs, 5),
            "rss_mb_every_10_min": rss, "detections": dets}
