"""ONNX Runtime GenAI (onnxruntime-genai, its int4 CPU model of SmolLM2 from its own builder), measured as
scripts/bench_smollm2.py measures heron's backends: the same token ids, greedy, decode tokens/s (min and
median of 3), prefill tokens/s of the same 400-token prompt, peak RSS, and the first 32 greedy tokens of
the same 8 chat prompts. Runs in the side venv that scripts/peers/genai_peers.sh builds; prints one JSON line.

    runs/genai-venv/bin/python scripts/peers/genai_peers.py MODEL_DIR PROMPTS_JSON THREADS
"""
import json
import sys
import time

from lm_measure import report  # this folder (sys.path[0])


def main() -> int:
    import onnxruntime_genai as og

    folder, prompts_file, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    p = json.load(open(prompts_file))  # token ids made by heron's tokenizer (the same vocabulary)
    config = og.Config(folder)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
    model = og.Model(config)

    def generator(n_prompt: int, n_new: int):
        params = og.GeneratorParams(model)
        # greedy; min_length = max_length: end tokens do not stop the timing loop (as in heron's bench)
        params.set_search_options(do_sample=False, max_length=n_prompt + n_new, min_length=n_prompt + n_new)
        return og.Generator(model, params)

    def greedy(ids, n):
        gen = generator(len(ids), n)
        gen.append_tokens(ids)  # the prompt's prefill and its first token's logits
        gen.generate_next_token()
        out, t0 = [int(gen.get_next_tokens()[0])], time.perf_counter()
        for _ in range(n - 1):
            gen.generate_next_token()
            out.append(int(gen.get_next_tokens()[0]))
        return out, (n - 1) / (time.perf_counter() - t0)

    def prefill(ids):
        gen = generator(len(ids), 1)
        return lambda: gen.append_tokens(ids)

    report(p, greedy, prefill)
    return 0


if __name__ == "__main__":
    sys.exit(main())
