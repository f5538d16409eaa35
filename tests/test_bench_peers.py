"""`heron lm bench --peers`: SmolLM2 against llama.cpp, ONNX Runtime GenAI and transformers through
scripts/bench_smollm2.py, with the peers' side builds made once under --out. The commands are checked here, not run
(the builds take up to 45 minutes and the measurement ten): what runs, in which order, and that everything it writes
lands under --out."""
import json
import subprocess
from pathlib import Path

import pytest

from heron import bench_lm

ROOT = Path(__file__).resolve().parents[1]


def _bench_script():
    """scripts/bench_smollm2.py as a module (scripts/ is not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_smollm2", ROOT / "scripts" / "bench_smollm2.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _writes_under(out: Path, argv: list[str], env: dict) -> None:
    """Every place a command is told to write is inside `out`."""
    assert Path(env["PEERS_DIR"]).resolve().is_relative_to(out.resolve())
    for flag in ("--out", "--peers-dir"):
        if flag in argv:
            assert Path(argv[argv.index(flag) + 1]).resolve().is_relative_to(out.resolve())


def test_the_plan_builds_what_is_missing_once_then_measures(tmp_path):
    out = tmp_path / "peers-run"
    plan = bench_lm.peers_plan(ROOT, out, (1, 2), 3, "/usr/bin/python3")
    assert [p[1][1].rsplit("/", 1)[-1] for p in plan[:2]] == ["lm_peers.sh", "genai_peers.sh"]
    what, argv, env = plan[-1]
    assert argv[1] == str(ROOT / "scripts" / "bench_smollm2.py") and what.startswith("measuring")
    assert argv[argv.index("--threads") + 1:argv.index("--rounds")] == ["1", "2"]
    assert argv[argv.index("--rounds") + 1] == "3"
    assert argv[argv.index("--backends") + 1].split(",") == list(bench_lm.PEER_BACKENDS)
    for _, argv, env in plan:
        _writes_under(out, argv, env)
        assert env["HERON_PYTHON"] == "/usr/bin/python3"
    # what the builds leave behind: a later run with the same --out reuses it and only measures
    for script, done in bench_lm.PEER_BUILDS.values():
        (out / "peers" / done).parent.mkdir(parents=True, exist_ok=True)
        (out / "peers" / done).write_text("")
    again = bench_lm.peers_plan(ROOT, out, (1,), 1, "/usr/bin/python3")
    assert len(again) == 1 and again[0][0].startswith("measuring")


def test_the_build_scripts_and_the_bench_read_the_same_places():
    """scripts/peers/*.sh write under PEERS_DIR what PEER_BUILDS waits for and bench_smollm2.py's --peers-dir reads."""
    lm = (ROOT / "scripts" / "peers" / "lm_peers.sh").read_text()
    genai = (ROOT / "scripts" / "peers" / "genai_peers.sh").read_text()
    assert "V=${PEERS_DIR:-runs}/lm-peers-venv" in lm
    assert "P=${PEERS_DIR:-runs}" in genai and '-o "$P/smol-genai"' in genai
    mod = _bench_script()
    paths = mod.peer_paths(Path("/x"))
    done = {script: Path("/x") / marker for script, marker in bench_lm.PEER_BUILDS.values()}
    assert paths["llama.cpp"] == done["lm_peers.sh"]
    assert paths["genai_model"] / "genai_config.json" == done["genai_peers.sh"]


def test_without_a_checkout_it_says_so_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="source checkout"):
        bench_lm.peers_plan(tmp_path, tmp_path / "out", (1,), 1, "python")


def test_the_cli_runs_the_plan_goes_on_past_a_failed_build_and_says_where_the_table_is(tmp_path, monkeypatch, capsys):
    from heron.cli import main

    out = tmp_path / "run"
    ran, envs = [], []

    def fake_run(argv, env=None, **kw):
        ran.append(argv)
        envs.append(env)
        if argv[0] == "bash" and argv[1].endswith("lm_peers.sh"):
            return subprocess.CompletedProcess(argv, 1)  # llama.cpp's build fails: measured without it
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert main(["lm", "bench", "--peers", "--out", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "that build failed (exit 1)" in printed and f"the table is in {out / 'table.md'}" in printed
    assert len(ran) == 3 and ran[-1][ran[-1].index("--threads") + 1:ran[-1].index("--rounds")] == ["1"]
    assert envs[-1]["HERON_BENCH_COMMAND"] == f"heron lm bench --peers --out {out} --threads 1"  # the table names it


@pytest.mark.parametrize("argv, message", [
    (["--peers"], "--peers needs --out"),
    (["--peers", "--out", "OUT", "--methods", "none", "draft"], "--methods does not apply to --peers"),
    (["--peers", "--out", "OUT", "--json", "x.json"], "--json does not apply to --peers"),
    (["--peers", "--out", "OUT", "--model", "lm-nano"], "--model does not apply to --peers"),
    (["--peers", "--out", "OUT", "--prompt-set", "chat"], "--prompt-set does not apply to --peers"),
    (["--out", "OUT"], "--out and --rounds apply to --peers only"),
    (["--rounds", "2"], "--out and --rounds apply to --peers only"),
])
def test_options_that_do_not_apply_are_refused_before_anything_runs(tmp_path, monkeypatch, capsys, argv, message):
    from heron.cli import main

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("nothing may run"))
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    assert main(["lm", "bench", *argv]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_bench_keeps_each_backend_on_the_same_cores():
    """Every backend's process is pinned to the last N of this process's CPUs for N threads (where taskset exists and
    there are more CPUs than that), so heron and its peers run on the same cores."""
    import os
    import shutil
    mod = _bench_script()
    cpus = sorted(os.sched_getaffinity(0))
    if not shutil.which("taskset") or len(cpus) < 2:
        assert mod.pinned(1) == []
        return
    assert mod.pinned(1) == ["taskset", "-c", str(cpus[-1])]
    assert mod.pinned(len(cpus)) == []  # all of them: nothing to choose


def test_the_table_names_the_command_that_made_it(monkeypatch):
    mod = _bench_script()
    monkeypatch.setenv(mod.COMMAND_ENV, "heron lm bench --peers --out runs/x")
    assert mod.command_line() == "heron lm bench --peers --out runs/x"
    monkeypatch.delenv(mod.COMMAND_ENV)
    monkeypatch.setattr("sys.argv", ["scripts/bench_smollm2.py", "--out", "runs/y"])
    assert mod.command_line().endswith("scripts/bench_smollm2.py --out runs/y")


def test_mirror_whatif_prices_one_change_at_a_time(tmp_path, capsys, monkeypatch):
    """scripts/mirror_whatif.py: a bench report's costs and acceptance through heron.bench_lm's predictions, one
    change per line; a faster draft lifts both methods, a free verify only draft SD; a file that is no report: exit 2."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mirror_whatif", ROOT / "scripts" / "mirror_whatif.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    costs = {"target_step_s": 0.032, "verify_s": 0.042, "beta": 1.31, "draft_step_s": 0.0055, "c": 0.17, "gamma": 8}
    beside = {"target_step_s": 0.043, "verify_s": 0.062, "beta": 1.43, "draft_step_s": 0.0066, "c": 0.15, "gamma": 8,
              "beside": True}
    sd, mirror = mod.predictions(costs, beside, 0.967)
    fast_sd, fast_mirror = mod.predictions(costs, beside, 0.967, draft=0.5)
    free_sd, free_mirror = mod.predictions(costs, beside, 0.967, verify=0.0)
    assert 1 < sd < mirror and fast_sd > sd and fast_mirror > mirror and free_sd > sd
    assert free_mirror / free_sd < mirror / sd  # a cheaper verify helps the serial method more
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"costs": costs, "costs_beside": beside, "rows": [{"method": "draft", "alpha": 0.967}]}))
    monkeypatch.setattr("sys.argv", ["mirror_whatif.py", str(report)])
    assert mod.main() == 0
    assert capsys.readouterr().out.count("ratio") == 8
    report.write_text("{}")
    assert mod.main() == 2
