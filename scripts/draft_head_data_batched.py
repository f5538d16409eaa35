"""More training data for the draft head, faster: SmolLM2 answers many prompts at once (a batch of sequences costs
little more per step than one on a CPU, bound by reading the weights), then each batch's answers are recorded in
one teacher-forced call: at every position that chose a word, the final norm's output (`hidden`) and the top-K
next-word log-probabilities, the same records as scripts/draft_head_data.py writes (without middle-layer streams).

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python scripts/draft_head_data_batched.py --out runs/head-data-b --shard 0/2
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python scripts/draft_head_data_batched.py --out runs/head-data-b --shard 1/2

The model is `transformers`' Llama on the dequantized GGUF file (SmolLM2-135M-Instruct.Q4_1.gguf, the one heron's
graphs are built from): answers in bfloat16 (107-142 tokens per second per core on machine B with the recording,
2-3x draft_head_data.py's one answer at a time on the int8 graph; half greedy, half sampled at temperature 0.7, batch by batch), records in float32 (the
features and distributions the head learns from are the target's own to float32 precision; heron's default int8x2
graph keeps fp32's answers). Token ids come from heron's own tokenizer and chat template, so the contexts are those
the head meets in use. Prompts: every template of draft_head_data.py's sets 1-4 crossed with every topic of those
sets and more (set 5: only the pairs those sets do not already ask), none of the speculation benchmarks' prompts
(checked at start); each prompt answered once. One .npz per answer (t*.npz for set 5, u*.npz for set 6: --set; resumable: a batch whose files exist
is skipped); nothing is pickled. Train on it with the other answers: scripts/train_draft_head.py --data DIR DIR2.
"""
from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import draft_head_data as hd  # noqa: E402  (the prompt lists and the benchmarks' held-out prompts)

# set 5's extra topics: everyday, science, technology and work, none from a benchmark prompt
TOPICS_5 = [
    "a leaky faucet", "a power outage", "spring cleaning", "a farmers market", "a library card", "jet lag",
    "a sore throat", "a budget spreadsheet", "a potluck", "a bike commute",
    "a smoke detector", "composting", "a vegetable garden", "a fire drill", "a lunch break", "a thank-you note",
    "volunteering", "a science fair", "a board game night", "an allergy", "a fitness tracker", "a recipe swap",
    "the speed of light", "atoms", "cells", "evolution", "the solar system", "weather forecasts", "hurricanes",
    "plate tectonics", "fossils", "the periodic table", "sound waves", "friction", "photosynthesis in algae",
    "the nervous system", "antibiotics", "nutrition labels", "bacteria", "the carbon cycle", "coral reefs",
    "a spreadsheet formula", "a keyboard", "a password", "two-factor authentication", "a web server",
    "a programming language", "open-source software", "a software bug", "a code review", "pair programming",
    "a command line", "a file system", "a network cable", "Wi-Fi", "a smartphone app", "artificial intelligence",
    "a chatbot", "a video call", "an online course", "a digital camera", "3D printing", "a drone",
    "the Great Wall of China", "ancient Egypt", "the Renaissance", "the Industrial Revolution", "the Silk Road",
    "the Vikings", "the Cold War", "the invention of the telephone", "a constitution", "a city council",
    "a museum curator", "a nurse", "a teacher", "a chef", "an architect", "a pilot", "a farmer", "a librarian",
]


def prompts_set5() -> list[str]:
    """Every template of sets 1-4 x every topic of sets 1-4 and TOPICS_5, less the prompts sets 1-4 ask."""
    templates = hd.TEMPLATES + hd.TEMPLATES_2 + hd.TEMPLATES_3 + hd.TEMPLATES_4
    topics = list(dict.fromkeys(hd.TOPICS + hd.TOPICS_3 + hd.TOPICS_4 + TOPICS_5))
    before = set()
    for k in (1, 2, 3, 4):
        before |= set(hd.prompt_set(which=k))
    prompts = [p for p in (t.format(t=x) for t, x in itertools.product(templates, topics)) if p not in before]
    prompts = list(dict.fromkeys(prompts))
    random.Random(5).shuffle(prompts)
    return prompts


# set 6: what sets 1-5 ask least: code to write (Python, JavaScript, SQL, shell), code to edit and return whole (the
# standard library's functions from modules sets 1-2 do not use; prompt lookup and the head share those rounds),
# and short answers and explanations over new topics (no benchmark topic: no hash table, no job interview)
CODE_TASKS_6 = [
    "splits a list into chunks of n items", "checks whether a number is prime", "returns the second largest number",
    "counts the words in a sentence", "converts a string to title case", "sums the digits of an integer",
    "checks whether a year is a leap year", "returns the median of three numbers", "rotates a list by k places",
    "finds the common items of two lists", "removes vowels from a string", "converts a Roman numeral to an integer",
    "converts an integer to binary without bin()", "finds the longest word in a sentence",
    "checks whether brackets in a string are balanced", "returns the running total of a list",
    "zips two lists into a dictionary", "swaps the keys and values of a dictionary", "computes a power by squaring",
    "finds the index of the minimum", "pads a string on the left with zeros", "parses a date like 2024-03-01",
    "shuffles a list in place", "returns every pair of items of a list", "computes the dot product of two vectors",
    "checks whether a list is sorted", "counts the lines of a file", "truncates a string to n characters with an ellipsis",
    "converts kilometres to miles", "returns the n largest items of a list", "merges two dictionaries",
    "finds duplicate items in a list", "reverses the words of a sentence", "computes the area of a circle",
]
CODE_TEMPLATES_6 = [
    "Write a Python function that {t}.", "Write a JavaScript function that {t}.", "Write a one-line Python expression that {t}.",
    "Write a Python function that {t} and show an example call.", "Write a TypeScript function that {t}.",
    "In Python, what is the simplest way to write code that {t}?",
]
SQL_TASKS_6 = [
    "selects the ten most recent orders", "counts the customers per country", "finds the products that were never ordered",
    "returns the average salary per department", "deletes the rows older than a year", "adds a column named email",
    "joins the orders and customers tables", "finds duplicate email addresses", "updates the price of one product",
    "creates a table of books with a title, an author and a year",
]
SHELL_TASKS_6 = [
    "finds every file larger than 100 MB", "counts the lines of every Python file in a folder",
    "renames every .txt file to .md", "shows the ten biggest folders", "replaces a word in every file of a folder",
    "lists the processes that use the most memory", "compresses a folder into a tar.gz file",
    "downloads a file and checks its sha256",
]
EDIT_TEMPLATES_6 = [
    "Add type hints to this function and return the whole function:\n\n{c}",
    "Rename the arguments of this function to clearer names and return the whole function:\n\n{c}",
    "Add comments to this function and return the whole function:\n\n{c}",
    "Rewrite this function in JavaScript:\n\n{c}",
]
STDLIB_MODULES_6 = ["urllib.parse", "email.utils", "gettext", "mimetypes", "quopri", "tokenize", "shutil", "tempfile",
                    "filecmp", "inspect", "ast", "functools", "re", "tarfile", "logging", "uuid", "secrets", "dataclasses",
                    "enum", "warnings", "traceback", "linecache", "sysconfig", "platform", "getpass", "locale", "types",
                    "typing", "gzip", "bz2", "pstats", "doctest", "webbrowser", "fileinput", "pkgutil"]
TOPICS_6 = [
    "a binary tree", "a stack", "a queue", "a priority queue", "a graph in computer science", "a cache",
    "a pointer", "a thread", "a process", "a deadlock", "a race condition", "garbage collection", "a compiler warning",
    "an integer overflow", "floating-point numbers", "Unicode", "a regular expression", "a REST API", "JSON", "XML",
    "a checksum", "a load balancer", "a container", "a virtual environment", "a package manager",
    "a unit of measurement", "the metric system", "a leap year", "time zones", "daylight saving time", "a calendar",
    "a thunderstorm", "snow", "fog", "a rainbow's colours", "the northern lights", "a solar eclipse", "a tsunami",
    "a river delta", "a mountain range", "a cave", "an island", "a lake", "a swamp", "a savanna", "the Arctic",
    "an octopus", "a whale", "a penguin", "an eagle", "a spider", "an ant colony", "a honeybee dance", "a chameleon",
    "a sunflower", "an oak tree", "a mushroom", "moss", "a cactus", "seaweed", "a seed", "pollination",
    "the heart rate", "blood types", "the skeleton", "the lungs", "the kidneys", "vitamins", "hydration", "a fever",
    "a headache", "a sprained ankle", "stretching", "posture", "a nap", "a balanced diet", "sugar", "caffeine",
    "a loan", "interest rates", "a pension", "a credit card", "a receipt scanner", "an invoice", "a currency",
    "exchange rates", "a small business plan", "a marketing email", "a product launch", "a customer complaint",
    "a meeting agenda", "a project deadline", "feedback at work", "a performance review", "a resignation letter",
    "a lighthouse", "a bridge", "a skyscraper", "a dam", "a windmill", "a steam engine", "a jet engine", "a submarine",
    "a satellite", "a telescope", "a microscope", "a thermometer", "a compass", "a map", "GPS", "a clock",
    "poetry", "a novel", "a short film", "a comic book", "a symphony", "a guitar", "a piano", "drawing",
    "photography", "knitting", "woodworking", "pottery", "origami", "a puzzle", "a crossword", "chess openings",
    "football", "tennis", "swimming", "yoga", "cycling", "hiking", "skiing", "a marathon training plan",
    "a birthday gift", "a holiday tradition", "a dinner recipe", "a pancake recipe", "a salad", "soup", "tea",
    "a sourdough starter", "leftovers", "a grocery list", "a kitchen knife", "a frying pan", "a slow cooker",
]
TEMPLATES_6 = [
    "What is {t}?", "In one sentence, what is {t}?", "Briefly explain {t}.", "What is {t} used for?",
    "Can you explain {t} simply?", "Tell me one surprising fact about {t}.", "How would you describe {t} to a friend?",
    "Give me a quick overview of {t}.", "What are two things everyone should know about {t}?",
    "Write three sentences about {t}.", "What is the most important thing about {t}?", "Define {t}.",
]


def prompts_set6() -> list[str]:
    """Code to write and to edit, and short answers over new topics (TOPICS_6), less the prompts sets 1-5 ask."""
    before = set(prompts_set5())
    for k in (1, 2, 3, 4):
        before |= set(hd.prompt_set(which=k))
    prompts = [t.format(t=x) for t, x in itertools.product(CODE_TEMPLATES_6, CODE_TASKS_6 + hd.CODE_TASKS)]
    prompts += [f"Write a SQL query that {x}." for x in SQL_TASKS_6]
    prompts += [f"Write a shell command that {x}." for x in SHELL_TASKS_6]
    functions = hd.stdlib_functions(40, STDLIB_MODULES_6)
    prompts += [t.format(c=c) for i, c in enumerate(functions) for t in (EDIT_TEMPLATES_6[i % 4], EDIT_TEMPLATES_6[(i + 1) % 4])]
    prompts += [t.format(t=x) for t, x in itertools.product(TEMPLATES_6, TOPICS_6)]
    prompts = [p for p in dict.fromkeys(prompts) if p not in before]
    random.Random(6).shuffle(prompts)
    return prompts


PROMPT_SETS = {5: ("t", prompts_set5), 6: ("u", prompts_set6)}  # set -> (file prefix, prompts)


def record_batch(model, answers: list[tuple[list[int], list[int]]], top_k: int) -> list[dict]:
    """One teacher-forced float32 call over the batch (left-padded): per answer, the final norm's output and the
    top-K next-word log-probs at every position that chose a word."""
    import torch

    seqs = [p + a[:-1] for p, a in answers]
    T = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):] = torch.tensor(s)
        mask[i, T - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        h = model.model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state  # after the final norm
        out = []
        for i, (p, a) in enumerate(answers):
            start = T - len(seqs[i]) + len(p) - 1  # the position that chose a[0]
            hi = h[i, start:start + len(a)]
            lp = torch.log_softmax(model.lm_head(hi).double(), -1)
            top = lp.topk(top_k, -1)
            out.append({"prompt": np.asarray(p, np.int32), "tokens": np.asarray(a, np.int32),
                        "hidden": hi.numpy().astype(np.float16), "top_ids": top.indices.numpy().astype(np.int32),
                        "top_logprobs": top.values.numpy().astype(np.float16)})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for one .npz per answer (resumable)")
    ap.add_argument("--shard", default="0/1", help="i/n: this process answers every n-th batch from the i-th")
    ap.add_argument("--batch", type=int, default=64, help="answers generated at once")
    ap.add_argument("--new-tokens", type=int, default=160)
    ap.add_argument("--minutes", type=float, default=60.0, help="stop starting new batches after this long")
    ap.add_argument("--limit", type=int, default=None, help="answer only the first N prompts (a quick check)")
    ap.add_argument("--set", type=int, default=5, choices=sorted(PROMPT_SETS),
                    help="5: sets 1-4's templates x all their topics (t*.npz); 6: code to write and edit, short answers (u*.npz)")
    a = ap.parse_args()
    if a.batch < 1 or a.new_tokens < 2 or a.minutes <= 0:
        ap.error("--batch >= 1, --new-tokens >= 2 and --minutes > 0")
    import torch
    import transformers

    import heron
    from heron.models.lm.draft_head import TOP_K
    from heron.paths import named_lm_path

    i, n = (int(v) for v in a.shard.split("/"))
    prefix, prompt_fn = PROMPT_SETS[a.set]
    prompts = prompt_fn()[:a.limit]
    clash = hd.held_out() & set(prompts)
    if clash:
        raise SystemExit(f"benchmark prompts in the training set: {sorted(clash)[:3]}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = heron.load_lm("smollm2", threads=1)  # heron's tokenizer, chat template and stop words
    end = set(lm.end_ids)
    path = named_lm_path("smollm2")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              torch_dtype=torch.float32).eval()
    gen = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                            torch_dtype=torch.bfloat16).eval()
    pad = min(end)
    t0, done = time.time(), 0
    batches = [list(range(s, min(s + a.batch, len(prompts)))) for s in range(0, len(prompts), a.batch)]
    print(f"{len(prompts)} prompts, {len(batches)} batches; this shard: {len(batches[i::n])}", flush=True)
    for b in range(i, len(batches), n):
        idx = batches[b]
        files = [out / f"{prefix}{j:05d}.npz" for j in idx]
        if all(f.exists() for f in files):
            continue
        if time.time() - t0 > a.minutes * 60:
            break
        ids = [lm.encode(lm.chat_prompt([{"role": "user", "content": prompts[j]}])) for j in idx]
        T = max(len(x) for x in ids)
        x = torch.full((len(ids), T), pad, dtype=torch.long)
        m = torch.zeros(len(ids), T, dtype=torch.long)
        for r, s in enumerate(ids):
            x[r, T - len(s):] = torch.tensor(s)
            m[r, T - len(s):] = 1
        sample = b % 2 == 1
        t_gen_start = time.time()
        torch.manual_seed(b)
        with torch.no_grad():
            y = gen.generate(input_ids=x, attention_mask=m, max_new_tokens=a.new_tokens, do_sample=sample,
                             temperature=0.7 if sample else None, top_p=None, top_k=None, pad_token_id=pad,
                             eos_token_id=sorted(end))[:, T:].tolist()
        answers = []
        for s, row in zip(ids, y):
            cut = next((k + 1 for k, t in enumerate(row) if t in end), len(row))  # up to and with the stop word
            answers.append((s, row[:cut]))
        t_gen, t_rec = time.time() - t_gen_start, time.time()
        for f, rec in zip(files, record_batch(model, answers, TOP_K)):
            tmp = f.with_suffix(".tmp.npz")
            np.savez(tmp, **rec)
            tmp.rename(f)
            done += len(rec["tokens"])
        print(f"batch {b} ({'sampled' if sample else 'greedy'}): {sum(len(r) for _, r in answers)} tokens, "
              f"{done} in all, {done / (time.time() - t0):.1f}/s (generating {t_gen:.0f} s, recording "
              f"{time.time() - t_rec:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
