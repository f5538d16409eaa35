"""llama.cpp (llama-cpp-python) on SmolLM2's own GGUF file, measured as scripts/bench_smollm2.py measures
heron's backends: the same prompts, greedy, decode tokens/s (min and median of 3), prefill tokens/s of
the same 400-token prompt, peak RSS, and the first 32 greedy tokens of the same 8 chat prompts. Runs in
the side venv that scripts/peers/lm_peers.sh builds; prints one JSON line.

    runs/lm-peers-venv/bin/python scripts/peers/lm_peers.py GGUF_FILE PROMPTS_JSON THREADS
"""
import json
import sys
import time

from lm_measure import report  # this folder (sys.path[0])


def main() -> int:
    import numpy as np
    from llama_cpp import Llama

    path, prompts_file, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    p = json.load(open(prompts_file))  # token ids made by heron's tokenizer (the file's own vocabulary)
    llm = Llama(model_path=path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, n_batch=512,
                verbose=False, logits_all=False)

    n_vocab = llm.n_vocab()

    def last_logits():  # 0.3.36 copies logits into llm.scores only with logits_all: read llama.cpp's own buffer
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    def greedy(ids, n):
        llm.reset()  # generate() would reuse a shared prefix's cache
        llm.eval(ids)
        out, t0 = [int(last_logits().argmax())], time.perf_counter()
        for _ in range(n - 1):
            llm.eval([out[-1]])
            out.append(int(last_logits().argmax()))
        return out, (n - 1) / (time.perf_counter() - t0)

    def prefill(ids):
        llm.reset()
        return lambda: llm.eval(ids)

    report(p, greedy, prefill)
    return 0


if __name__ == "__main__":
    sys.exit(main())
