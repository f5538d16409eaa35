"""`heron lm ...` end to end with the shipped artifacts (lm-nano target + MTP adapter, lm-draft bundle)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "weights" / "lm-nano"
DRAFT = ROOT / "runtime" / "assets" / "lm-draft"
needs_shipped = pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file() or not (DRAFT / "manifest.json").is_file(),
                                   reason="the shipped LM artifacts are missing (scripts/lm_experiments.sh builds them)")


def heron(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "heron", *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"heron {args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


@needs_shipped
def test_generate_every_method_gives_the_same_text():
    prompt = "Return a new list of"
    outs = {}
    for method in ("none", "draft", "mtp", "mirror"):
        p = heron("lm", "generate", prompt, "--max-new-tokens", "24", "--speculative", method)
        outs[method] = p.stdout
        assert p.stdout.startswith(prompt) and len(p.stdout) > len(prompt) + 10
        if method != "none":
            assert re.search(r"tokens in \d+ target forwards", p.stderr)
    assert len(set(outs.values())) == 1  # lossless: the same greedy text from every method


@needs_shipped
def test_top_k_1_and_a_min_p_near_1_sample_the_greedy_answer():
    """Sampling among the likeliest word only (top-k 1, or min-p 0.999 where no two words tie) draws the greedy
    answer at any temperature, from plain decoding and from speculation (rejection sampling against the cut
    distribution: lossless), through the API and `heron lm generate --top-k / --min-p`; bad values are one line."""
    from heron.lm import load_lm
    from heron.runtime.decoding import GenerationOptions, SpeculativeOptions

    lm = load_lm(None, threads=1)
    prompt = lm.encode("Return a new list of")
    greedy = [t.id for t in lm.generate(prompt, GenerationOptions(max_new_tokens=16))]
    for spec in (None, SpeculativeOptions(method="lookup")):
        for cut in ({"top_k": 1}, {"min_p": 0.999}, {"top_k": 1, "top_p": 0.5}):
            opts = GenerationOptions(max_new_tokens=16, temperature=1.3, seed=4, **cut)
            assert [t.id for t in lm.generate(prompt, opts, spec)] == greedy, (spec, cut)
    plain = heron("lm", "generate", "Return a new list of", "--max-new-tokens", "12").stdout
    assert heron("lm", "generate", "Return a new list of", "--max-new-tokens", "12", "--temperature", "0.9",
                 "--top-k", "1").stdout == plain
    p = heron("lm", "generate", "The", "--temperature", "0.9", "--min-p", "1.5", check=False)
    assert p.returncode != 0 and "min_p must be in [0, 1)" in p.stderr and "Traceback" not in p.stderr


@needs_shipped
def test_generate_dial_k_roe_and_stream():
    assert heron("lm", "generate", "The", "--k", "2", "--max-new-tokens", "8").stdout.startswith("The")
    assert heron("lm", "generate", "The", "--roe-samples", "3", "--max-new-tokens", "8").stdout.startswith("The")
    assert heron("lm", "generate", "The", "--stream", "--max-new-tokens", "8").stdout.startswith("The")
    coloured = heron("lm", "generate", "Return the", "--speculative", "draft", "--show-drafts", "always",
                     "--max-new-tokens", "24").stdout
    assert "\x1b[32m" in coloured


@needs_shipped
@pytest.mark.parametrize("args,message", [
    (["lm", "generate", ""], "empty prompt"),
    (["lm", "generate", "x", "--k", "0"], "--k"),
    (["lm", "generate", "x", "--k", "99"], "k must be in"),
    (["lm", "generate", "x", "--roe-samples", "0"], "--roe-samples"),
    (["lm", "generate", "word " * 600], "context"),
    (["lm", "generate", "x", "--speculative", "mirror", "--exit-layer", "9"], "exit-layer"),
    (["lm", "generate", "x", "--speculative", "draft", "--draft-device", "nosuch"], "offers"),
    (["lm", "generate", "x", "--speculative", "head"], "returns its hidden states"),
    (["lm", "generate", "x", "--speculative", "head", "--draft-head", "/nonexistent"], "returns its hidden states"),
    (["lm", "train", "--preset", "huge", "--out", "/tmp/heron-x"], "unknown preset"),
    (["lm", "generate", "x", "--model", "/nonexistent"], "no model"),
    (["lm", "generate", "x", "--compute", "int8"], "compute applies to a GGUF file"),
    (["lm", "bench", "--methods", "none", "bogus"], "invalid choice: 'bogus'"),
    (["lm", "bench", "--engine", "gpu"], "invalid choice: 'gpu'"),
    (["lm", "generate", "x", "--kappa", "-1"], "--kappa: must be in [0, 1024]"),
    # a flag that the chosen method would ignore is refused, not dropped
    (["lm", "generate", "x", "--draft-head", "/tmp"], "--draft-head applies where --speculative auto drafts"),
    (["lm", "generate", "x", "--speculative", "none", "--draft-head", "/tmp"],
     "--draft-head applies to --speculative head only"),
    (["lm", "generate", "x", "--speculative", "draft", "--kappa", "0"], "--kappa applies to --speculative mirror only"),
    (["lm", "generate", "x", "--speculative", "lookup", "--fixed-windows"],
     "--fixed-windows applies to --speculative mirror only"),
    (["lm", "generate", "x", "--gamma", "3"], "--gamma applies where --speculative auto drafts"),
    (["lm", "generate", "x", "--speculative", "none", "--gamma", "3"], "--gamma applies to a speculative method only"),
    (["lm", "generate", "x", "--roe-tau", "0.5"], "--roe-tau applies with --roe-samples > 1"),
    (["lm", "generate", "x", "--fast-steps", "--speculative", "lookup"], "--fast-steps is for plain decoding"),
    (["lm", "chat", "--prompt", "x", "--fast-steps", "--speculative", "head"], "--fast-steps is for plain decoding"),
    (["lm", "generate", "x", "--fast-steps"], "exact_steps=False applies to onnxruntime targets"),
    (["lm", "bench", "--methods", "none", "lookup", "--kappa", "1"], "--kappa applies to method mirror only"),
])
def test_bad_input_gets_a_clear_error(args, message):
    p = heron(*args, check=False)
    # 1: refused by heron; 2: refused by the argument parser (a value out of range)
    assert p.returncode in (1, 2) and message in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert p.stdout == ""  # refused before anything is printed (the prompt used to be echoed first)


def test_corrupt_checkpoint_is_refused(tmp_path):
    import shutil
    if not (SHIPPED / "model.safetensors").is_file():
        pytest.skip("no shipped LM")
    shutil.copytree(SHIPPED, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00" * 100)
    p = heron("lm", "generate", "x", "--model", str(tmp_path / "m"), check=False)
    assert p.returncode == 1 and "safetensors" in p.stderr


@needs_shipped
def test_onnx_target_path_runs_without_torch():
    """An exported bundle as the target: plain, draft and Mirror-SD decoding on onnxruntime (Mirror with kappa 0:
    the draft's own continuation beside the target's forward; its early exit needs the torch model), torch blocked."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from heron.cli import main\n"
            f"raise SystemExit(main(['lm', 'generate', 'Return the', '--model', r'{DRAFT}', "
            "'--max-new-tokens', '16', '--speculative', *sys.argv[1:]]))")
    outs = []
    for method in ("none", "draft", "mirror"):
        p = subprocess.run([sys.executable, "-c", code, method], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        outs.append(p.stdout)
    assert outs[0] == outs[1] == outs[2] and outs[0].startswith("Return the")
    p = subprocess.run([sys.executable, "-c", code, "mirror", "--kappa", "2"], capture_output=True, text=True)
    assert p.returncode == 1 and "runs inside the torch target (--engine torch)" in p.stderr, p.stderr


@needs_shipped
def test_export_with_an_impossible_k_is_refused_before_writing(tmp_path):
    """--k 99 on an 8-expert model used to fail inside torch.export and leave an empty --out behind."""
    out = tmp_path / "b"
    p = heron("lm", "export", str(SHIPPED), "--k", "99", "--out", str(out), check=False)
    assert p.returncode == 1 and "k must be in [1, 8]" in p.stderr and not out.exists()


@needs_shipped
def test_bench_without_draft_methods_needs_no_draft(tmp_path):
    """lm bench loaded the draft model for its cost table even when no method used it, so SmolLM2 (no
    draft of its vocabulary) could not be benchmarked with lookup: a missing draft must not matter. (The CLI now
    refuses --draft without a method that reads it, so the API is asked.)"""
    from heron.bench_lm import BenchOptions, markdown, run

    o = BenchOptions(prompts=1, new_tokens=8, repeats=1, threads=1, methods=("none", "lookup"))
    report = run(None, o, draft=str(tmp_path / "no-such-draft"), log=lambda *a: None)
    assert "| lookup |" in markdown(report)
    p = heron("lm", "bench", "--methods", "none", "lookup", "--draft", str(tmp_path / "no-such-draft"), check=False)
    assert p.returncode == 1 and "--draft applies to method draft or mirror only" in p.stderr


@needs_shipped
def test_bench_samples_when_given_a_temperature():
    """heron lm bench --temperature: every method samples, each prompt from the seed of its index (two plain runs draw
    the same tokens), and no row claims token-for-token losslessness, which sampled speculation does not give; bad
    sampling options are refused before anything runs."""
    from heron.bench_lm import BenchOptions, held_out_prompts, markdown, run, run_method
    from heron.lm import load_lm
    from heron.runtime.decoding import GenerationOptions

    lm = load_lm(None, threads=1)
    prompts, opts = held_out_prompts(lm.tokenizer, 2, 32), GenerationOptions(max_new_tokens=8, temperature=0.8)
    first, again = (run_method(lm, None, prompts, opts, "none")[1] for _ in range(2))
    assert first == again
    o = BenchOptions(prompts=2, new_tokens=8, repeats=2, threads=1, methods=("none", "lookup"), temperature=0.8,
                     top_p=0.9)
    report = run(None, o, log=lambda *a: None)
    assert [(r["method"], r["lossless"]) for r in report["rows"]] == [("none", None), ("lookup", None)]
    assert "sampled at temperature 0.8, top-p 0.9" in markdown(report)
    with pytest.raises(ValueError, match="temperature must be 0"):
        BenchOptions(temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        BenchOptions(temperature=0.5, top_p=0.0)
    p = heron("lm", "bench", "--peers", "--temperature", "0.5", check=False)
    assert p.returncode != 0 and "--temperature does not apply to --peers" in p.stderr


@needs_shipped
def test_bench_gives_serial_draft_sd_the_whole_budget_and_mirror_one_thread_less():
    """Draft SD is serial (its draft runs between the target's calls), so on a 2-thread budget its target verifies on
    both threads, as plain decoding's does; only Mirror-SD, whose draft runs beside the target, leaves it one thread.
    (The bench gave draft SD's target one thread, which understated it next to Mirror-SD.) Several windows: draft SD
    and Mirror-SD run at each, and every row is compared with the fastest draft SD row (each method at its best);
    each prediction is priced with the target's costs at the threads and window it ran with."""
    from heron.bench_lm import BenchOptions, markdown, method_threads, run

    assert [method_threads(m, 2) for m in ("none", "draft", "lookup", "head", "mtp", "mirror")] == [2, 2, 2, 2, 2, 1]
    assert method_threads("mirror", 1) == 1
    o = BenchOptions(prompts=1, new_tokens=8, repeats=1, threads=2, methods=("none", "draft", "mirror", "lookup"),
                     gamma=(2, 3), decode_preset="tiny", kappa=0, mirror_windows=("ahead", "fixed"))
    log = []
    report = run(None, o, log=log.append)
    got = [(r["method"], r["gamma"], r.get("windows"), r["target_threads"], r["draft_threads"]) for r in report["rows"]]
    assert got == [("none", None, None, 2, 0), ("draft", 2, None, 2, 1), ("draft", 3, None, 2, 1),
                   ("mirror", 2, "ahead", 1, 1), ("mirror", 2, "fixed", 1, 1), ("mirror", 3, "ahead", 1, 1),
                   ("mirror", 3, "fixed", 1, 1), ("lookup", 4, None, 2, 0)]
    assert any(line.startswith("mirror g=3 fixed (run 1 of 1)") for line in log)
    drafts = [r["speedup_vs_draft_sd"] for r in report["rows"] if r["method"] == "draft"]
    assert max(drafts) == 1.0 and min(drafts) <= 1.0
    assert (report["costs"]["threads"], report["costs_beside"]["threads"], report["costs"]["gamma"]) == (2, 1, 2)
    assert (report["costs"]["beside"], report["costs_beside"]["beside"]) == (False, True)
    mirrors = [r for r in report["rows"] if r["method"] == "mirror"]
    assert all(0 < r["predicted_speedup"] <= r["predicted_all_reused"] for r in mirrors if r["windows"] == "fixed")
    assert all(r["predicted_speedup"] > 0 and "predicted_all_reused" not in r and 1 <= r["mean_window"] <= r["gamma"]
               for r in mirrors if r["windows"] == "ahead")
    table = markdown(report)
    assert "target on 2 thread(s): beta (verify 3 tokens" in table and "target on 1 thread(s) beside the draft: beta" \
        in table
    with pytest.raises(ValueError, match=r"gamma must be distinct integers >= 1, got \[3, 3\]"):
        BenchOptions(gamma=(3, 3))
    with pytest.raises(ValueError, match=r"mirror_windows must be distinct values among ahead, fixed, got \['wide'\]"):
        BenchOptions(mirror_windows=("wide",))
    with pytest.raises(ValueError, match="several gamma values run draft and mirror at each; the methods are none, "
                                         "lookup"):
        BenchOptions(gamma=(2, 3), methods=("none", "lookup"))


def test_bench_prediction_of_windows_drafted_ahead():
    """Mirror-SD with windows as the draft writes them, simulated: a draft that is always right and far faster than the
    target fills every window (gamma words, gamma + 1 tokens per verify of gamma + 1); one that is never right yields
    one token per round: its wait for ceil(gamma / 4) words, their verify and the restart's half draft step; a faster
    draft never predicts less; the same figure every time (seeded)."""
    from heron.bench_lm import predicted_ahead

    alone = {"target_step_s": 0.040}
    beside = {"target_step_s": 0.050, "beta": 1.5, "draft_step_s": 1e-6}
    assert predicted_ahead(1.0, 8, alone, beside) == pytest.approx(9 / (0.050 * 1.5) * 0.040, rel=1e-3)
    slow = dict(beside, draft_step_s=0.005)
    never = 1 / (2 * 0.005 + 0.050 * (1 + 0.5 * 2 / 8) + 0.0025) * 0.040
    assert predicted_ahead(0.0, 8, alone, slow) == pytest.approx(never, rel=1e-6)
    speeds = [predicted_ahead(0.95, 12, alone, dict(beside, draft_step_s=d)) for d in (0.012, 0.006, 0.003)]
    assert speeds == sorted(speeds) and speeds[0] < speeds[-1]
    assert predicted_ahead(0.95, 12, alone, slow) == predicted_ahead(0.95, 12, alone, slow)


def test_bench_predictions_price_mirror_rounds_by_the_slower_side_and_its_missed_branches():
    """Draft SD: E tokens per gamma draft steps plus a verify, serial. Mirror-SD (kappa 0): the target's verify and the
    draft's next branch (gamma + 1 steps) overlap, each timed beside the other, and every round whose branch is not
    reused waits for a window drafted alone; both over a plain step at the whole budget. (Until session 33 Mirror-SD's
    prediction was E / max(beta, g c) at the target's own threads: no missed branches, no contention, 4.2x predicted
    for 2.9x measured on SmolLM2's chat questions.)"""
    from heron.bench_lm import expected_tokens, predicted_overlapped, predicted_serial

    assert expected_tokens(0.5, 2) == pytest.approx(1.75) and expected_tokens(1.0, 3) == 4
    alone = {"target_step_s": 0.040, "verify_s": 0.070, "draft_step_s": 0.005}
    beside = {"target_step_s": 0.045, "verify_s": 0.090, "draft_step_s": 0.006}
    e = expected_tokens(0.9, 8)
    assert predicted_serial(0.9, 8, alone) == pytest.approx(e * 0.040 / (8 * 0.005 + 0.070))
    # the target's verify is the longer side (90 ms against 9 x 6 ms); a quarter of the rounds miss: 8 x 5 ms alone
    assert predicted_overlapped(0.9, 8, alone, beside, 0.75) == pytest.approx(e * 0.040 / (0.090 + 0.25 * 0.040))
    assert predicted_overlapped(0.9, 8, alone, beside, 1.0) == pytest.approx(e * 0.040 / 0.090)
    # a long window: the draft's branch is the longer side
    assert predicted_overlapped(0.9, 16, alone, beside, 1.0) == pytest.approx(expected_tokens(0.9, 16) * 0.040 /
                                                                             (17 * 0.006))


def test_bench_options_refuse_an_unknown_method_before_running_any():
    from heron.bench_lm import BenchOptions

    with pytest.raises(ValueError, match="methods must be among none, draft, mtp, mirror, lookup, head, got .'none', 'bogus'."):
        BenchOptions(methods=("none", "bogus"))
    with pytest.raises(ValueError, match="methods must be among"):
        BenchOptions(methods=())


def test_bench_chat_prompt_set_is_the_questions_in_the_models_own_template():
    """--prompt-set chat: the first n CHAT_QUESTIONS, each rendered by the model's chat template and encoded (the
    answers end at the end of the turn); a bad set, or more prompts than questions, is refused before anything runs."""
    from heron.bench_lm import CHAT_QUESTIONS, BenchOptions, chat_prompts

    class Template:  # what chat_prompts needs of a LanguageModel
        def chat_prompt(self, messages):
            assert [m["role"] for m in messages] == ["user"]
            return f"<user>{messages[0]['content']}<assistant>"

        def encode(self, text):
            return [len(text), ord(text[6])]

    got = chat_prompts(Template(), 3)
    assert got == [[len(f"<user>{q}<assistant>"), ord(q[0])] for q in CHAT_QUESTIONS[:3]]
    assert len(set(CHAT_QUESTIONS)) == len(CHAT_QUESTIONS) >= 12
    with pytest.raises(ValueError, match="prompt_set must be one of held-out, chat"):
        BenchOptions(prompt_set="code")
    with pytest.raises(ValueError, match=f"the chat prompt set has {len(CHAT_QUESTIONS)} questions"):
        BenchOptions(prompt_set="chat", prompts=len(CHAT_QUESTIONS) + 1)


@needs_shipped
def test_bench_chat_prompt_set_needs_a_chat_template():
    p = heron("lm", "bench", "--prompt-set", "chat", "--methods", "none", "--prompts", "1", "--repeats", "1",
              check=False)
    assert p.returncode == 1 and "has no chat template" in p.stderr


def test_export_listing_gives_a_core_ml_package_its_size(tmp_path, capsys):
    """A .mlpackage is a folder: the export listing prints the size of its files, not 0.00 MB."""
    from heron.cli_lm import print_files

    pkg = tmp_path / "model.mlpackage" / "Data"
    pkg.mkdir(parents=True)
    (pkg / "weights.bin").write_bytes(b"\0" * 1_500_000)
    (tmp_path / "manifest.json").write_text("{}")
    print_files(tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert any(line.endswith("model.mlpackage  1.50 MB") for line in lines), lines


def test_load_lm_refuses_an_unknown_compute():
    import heron

    with pytest.raises(ValueError, match="compute must be one of int8x2, int8, fp32, got 'int4'"):
        heron.load_lm(compute="int4")
