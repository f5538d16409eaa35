"""What every LM peer runner (lm_peers.py: llama.cpp, genai_peers.py: ONNX Runtime GenAI) measures, as
scripts/bench_smollm2.py measures heron's backends, printed as one JSON line. Plain Python: the runners
live in side venvs without heron; each imports this file from its own folder."""
import json
import resource
import time


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MB."""
    for line in open("/proc/self/status").read().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(p: dict, greedy, prefill) -> None:
    """p: bench_smollm2's prompts.json (decode: prompt name -> token ids); greedy(ids, n) -> (n greedy token ids,
    decode tokens/s after the first); prefill(ids) -> a callable that runs the prompt's prefill (timed here; set-up
    stays outside)."""
    speeds = {name: [greedy(ids, p["new_tokens"])[1] for _ in range(p["repeats"])] for name, ids in p["decode"].items()}
    rates = []
    for _ in range(p["repeats"]):
        run = prefill(p["long"])
        t0 = time.perf_counter()
        run()
        rates.append(len(p["long"]) / (time.perf_counter() - t0))
    answers = [greedy(ids, p["match_tokens"])[0] for ids in p["questions"]]
    print(json.dumps({"decode_tok_s": speeds, "prefill_tok_s": rates, "answers": answers,
                      "peak_rss_mb": peak_rss_mb()}))
