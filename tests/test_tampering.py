"""Artifacts that cannot lie: edited manifests, symbolic links, wrong sizes, crafted configs.

Each case here was a red-team finding (a traceback, a hang, a MemoryError, or a bundle that loaded
and misbehaved). Every refusal must be one line: a BundleError / ValueError whose message has no
newline, raised before anything large is allocated or read.
"""
import json
import os
import resource
import shutil
import signal

import numpy as np
import pytest

from heron.runtime.bundle import DEFAULT_BUNDLE, BundleError, load_bundle, read_manifest
from heron.runtime.draft_head import DEFAULT_HEAD
from heron.runtime.lm import DEFAULT_DRAFT, OnnxLM
from heron.runtime.spotter import KeywordSpotter

from conftest import REPO, _copy, edit_manifest


def _one_line(exc: BaseException) -> None:
    msg = str(exc)
    assert msg and "\n" not in msg, f"not a one-line error: {msg!r}"


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A pristine copy of the shipped KWS bundle (with its background bank and int8 graphs)."""
    return _copy(DEFAULT_BUNDLE, tmp_path_factory.mktemp("shipped") / "kws")


def _load_kws(folder):
    return KeywordSpotter.load(folder)


class _Timeout(Exception):
    pass


def _bounded(fn, *args, seconds: int = 30):
    """Run fn with an alarm: a hang (e.g. hashing /dev/zero) fails the test instead of stalling CI."""
    def on_alarm(*_):
        raise _Timeout(f"{fn.__name__} did not return within {seconds} s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        return fn(*args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --- the manifest's identity --------------------------------------------------------------------

def test_edited_manifest_is_refused_by_its_identity(shipped, tmp_path):
    b = _copy(shipped, tmp_path / "b")
    edit_manifest(b, lambda m: m["calibration"].update(offset=60.0), sign=False)
    with pytest.raises(BundleError, match="changed after export") as e:
        load_bundle(b)
    _one_line(e.value)
    (b / "manifest.sha256").unlink()
    with pytest.raises(BundleError, match="manifest.sha256"):
        load_bundle(b)
    assert load_bundle(shipped).identity == (shipped / "manifest.sha256").read_text().strip()


def test_calibration_that_fires_on_everything_is_refused_even_when_resigned(shipped, tmp_path):
    # offset 60 made `heron listen` fire on pure silence
    b = edit_manifest(_copy(shipped, tmp_path / "b"), lambda m: m["calibration"].update(offset=60.0))
    with pytest.raises(BundleError, match="calibration"):
        load_bundle(b)
    b2 = edit_manifest(_copy(shipped, tmp_path / "b2"), lambda m: m["calibration"].update(offset=8.0))
    with pytest.raises(BundleError, match="background speech"):
        load_bundle(b2)


@pytest.mark.parametrize("change", [
    lambda m: m.update(frame_seconds=float("nan")),
    lambda m: m.update(chunk_samples=0),
    lambda m: m.update(chunk_samples=-5),
    lambda m: m.update(chunk_samples=10**12),
    lambda m: m["encoder"]["inputs"].update(cached_conv_0=[10**6, 10**6]),
    lambda m: m["gates"].update(layers=99),
    lambda m: m["files"]["background"].pop("sha256"),
    lambda m: m["files"]["background"].pop("path"),
    lambda m: m["files"].update(background="background.npy"),
    lambda m: m["encoder"]["inputs"].update(cached_conv_0=[1, 128, 15]),  # consistent-looking, wrong for the graph
    lambda m: m["matcher"].update(posterior_weight=11.0),
    lambda m: m["matcher"].update(posterior_weight="1"),
    lambda m: m["matcher"].update(posterior_wieght=1.0),  # a misspelt option would otherwise be a TypeError
], ids=["frame_seconds NaN", "chunk 0", "chunk -5", "chunk 1e12", "state 1e6x1e6", "layers 99", "no sha256",
        "no path", "string file entry", "state shape not the graph's", "posterior weight 11", "posterior weight text",
        "unknown matcher option"])
def test_malformed_manifests_the_red_team_found(shipped, tmp_path, change):
    b = edit_manifest(_copy(shipped, tmp_path / "b"), change)
    with pytest.raises(BundleError) as e:
        _bounded(_load_kws, b)
    _one_line(e.value)


# --- files: links, sizes, places ----------------------------------------------------------------

def test_symlinks_out_of_the_bundle_are_refused_without_reading(shipped, tmp_path):
    b = _copy(shipped, tmp_path / "zero")
    (b / "background.npy").unlink()
    os.symlink("/dev/zero", b / "background.npy")  # hashing this used to run forever
    with pytest.raises(BundleError, match="symbolic link") as e:
        _bounded(load_bundle, b)
    _one_line(e.value)
    # a link to a real file with a matching checksum and size was read and passed to np.load
    b2 = _copy(shipped, tmp_path / "passwd")
    target = tmp_path / "outside.npy"
    shutil.copy(b2 / "background.npy", target)
    (b2 / "background.npy").unlink()
    os.symlink(target, b2 / "background.npy")
    with pytest.raises(BundleError, match="symbolic link"):
        load_bundle(b2)
    # a linked folder on the way is a link too
    b3 = _copy(shipped, tmp_path / "dirlink")
    shutil.move(b3 / "modular", tmp_path / "modular_elsewhere")
    os.symlink(tmp_path / "modular_elsewhere", b3 / "modular")
    with pytest.raises(BundleError, match="symbolic link"):
        load_bundle(b3)


def test_files_are_read_only_up_to_their_declared_size(shipped, tmp_path):
    b = _copy(shipped, tmp_path / "big")
    with open(b / "background.npy", "ab") as f:
        f.write(b"\0" * 1000)
    with pytest.raises(BundleError, match="bytes"):
        load_bundle(b)
    b2 = edit_manifest(_copy(shipped, tmp_path / "abs"), lambda m: m["files"]["background"].update(path="/etc/passwd"))
    with pytest.raises(BundleError, match="outside"):
        load_bundle(b2)


# --- fuzz: every field, five mutations, signed and unsigned ---------------------------------------

def _leaves(doc, prefix=()):
    """Paths of every field: objects are walked, lists and scalars are leaves."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield prefix + (k,)
            yield from _leaves(v, prefix + (k,))


def _mutations(value):
    yield "delete", None
    yield "wrong type", "x" if not isinstance(value, str) else 7
    yield "NaN", float("nan")
    yield "huge", 10**12
    # below any legitimate value (a fixed -5 would be a fine calibration offset)
    yield "negative", -10 * (abs(value) + 1) if isinstance(value, (int, float)) and not isinstance(value, bool) else -5


def _apply(m, path, kind, new):
    node = m
    for p in path[:-1]:
        node = node[p]
    if kind == "delete":
        del node[path[-1]]
    else:
        node[path[-1]] = new


# fields the runtime never reads (provenance, notes; prefixes): a well-formed change to them may load
KWS_INFO = {("heron_version",), ("features", "type"), ("features", "window"), ("calibration", "fitted_on"),
            ("model",)}
LM_INFO = {("name",), ("source",)}
# optional parts: deleting one leaves a smaller valid bundle (no word times without the phoneme table; no
# steady skip without speech_gate.steady_db, as in bundles made before it)
KWS_OPTIONAL = {("files", "phoneme_table"), ("speech_gate", "steady_db")}


def _allowed(path, kind, prefixes, optional=()):
    return any(path[:len(p)] == p for p in prefixes) or (kind == "delete" and path in optional)


def _fuzz(folder, load, info, optional=(), sample_files=None):
    """Mutate every manifest field of a bundle (in place; restored after), unsigned and re-signed."""
    from heron.runtime.bundle import write_identity

    text0 = (folder / "manifest.json").read_text()
    m0 = json.loads(text0)
    paths = list(_leaves(m0))
    if sample_files is not None:  # every field of a few file entries (the rest are alike)
        keep = set(list(m0["files"])[:sample_files]) | {"background", "phoneme_table"}
        paths = [p for p in paths if p[0] != "files" or len(p) == 1 or p[1] in keep]
    loaded, refused = [], 0
    try:
        for path in paths:
            node = m0
            for p in path:
                node = node[p]
            for kind, new in _mutations(node):
                for sign in (False, True):
                    m = json.loads(text0)
                    _apply(m, path, kind, new)
                    (folder / "manifest.json").write_text(json.dumps(m))
                    if sign:
                        write_identity(folder)
                    try:
                        _bounded(load, folder, seconds=60)
                    except (BundleError, ValueError) as e:
                        _one_line(e)
                        refused += 1
                        continue
                    # only a signed, well-formed change to a field the runtime never reads may load
                    assert sign and _allowed(path, kind, info, optional), \
                        f"{'.'.join(map(str, path))} {kind} (signed={sign}) loaded"
                    loaded.append((path, kind))
    finally:
        (folder / "manifest.json").write_text(text0)
        write_identity(folder)
    # every other case was refused (asserted above); some allowed ones loaded, so the harness's copies
    # are loadable and the refusals are the validator's, not a broken fixture's
    assert refused and loaded
    return loaded


def test_fuzz_every_kws_manifest_field(shipped, tmp_path):
    b = _copy(shipped, tmp_path / "fuzz")
    loaded = _fuzz(b, _load_kws, KWS_INFO, KWS_OPTIONAL, sample_files=3)
    assert all(_allowed(p, k, KWS_INFO, KWS_OPTIONAL) for p, k in loaded)


def test_the_shipped_bundles_are_the_pinned_ones():
    """heron.runtime.pinned is rewritten by the build scripts (scripts/pin_bundles.py) when they ship."""
    from heron.runtime.pinned import SHIPPED
    assert load_bundle(DEFAULT_BUNDLE).identity == SHIPPED["kws"]
    assert OnnxLM(DEFAULT_DRAFT).identity == SHIPPED["lm-draft"]
    assert read_manifest(DEFAULT_HEAD, "draft-head")[1] == SHIPPED["draft-head-smollm2"]


def test_a_resigned_shipped_bundle_is_refused_by_its_pin(shipped, tmp_path, monkeypatch, capsys):
    """Editing the shipped manifest and recomputing manifest.sha256 used to load (the fire-range checks
    run only with a bank): the shipped identity is pinned in code; any bundle can be pinned by its user."""
    import heron.runtime.bundle as bundle_mod
    import heron.runtime.draft_head as head_mod
    import heron.runtime.lm as lm_mod
    from heron.cli import main

    original = (shipped / "manifest.sha256").read_text().strip()
    b = edit_manifest(_copy(shipped, tmp_path / "b"), lambda m: m["calibration"].update(threshold=0.05))
    load_bundle(b)  # a signed, well-formed edit of another bundle loads: nothing pins it ...
    with pytest.raises(BundleError, match=f"is not the expected identity {original}") as e:
        load_bundle(b, sha256=original)  # ... unless its user pins it
    _one_line(e.value)
    monkeypatch.setattr(bundle_mod, "DEFAULT_BUNDLE", b)  # the same edit of the shipped bundle
    with pytest.raises(BundleError, match="is not the identity pinned for heron's shipped bundle"):
        KeywordSpotter.load()
    with pytest.raises(ValueError, match="64 hex digits"):
        load_bundle(shipped, sha256="abc")
    code = main(["kws", "score", "--model", str(b), "--model-sha256", original, "--keyword", "hey heron", "x.wav"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "is not the expected identity" in err and "\n" not in err
    draft = edit_manifest(_copy(DEFAULT_DRAFT, tmp_path / "draft"), lambda m: m.update(name="other"))
    monkeypatch.setattr(lm_mod, "DEFAULT_DRAFT", draft)
    with pytest.raises(BundleError, match="pinned"):
        OnnxLM(lm_mod.DEFAULT_DRAFT)
    head = edit_manifest(_copy(DEFAULT_HEAD, tmp_path / "head"), lambda m: m.update(name="other"))
    monkeypatch.setattr(head_mod, "DEFAULT_HEAD", head)
    with pytest.raises(BundleError, match="pinned"):  # before any target is asked for
        head_mod.DraftHead(head)


def test_fuzz_every_kws_manifest_field_against_a_pinned_identity(shipped, tmp_path):
    b = _copy(shipped, tmp_path / "pin")
    original = (b / "manifest.sha256").read_text().strip()
    text0 = (b / "manifest.json").read_text()
    m0 = json.loads(text0)
    from heron.runtime.bundle import write_identity
    n = 0
    for path in _leaves(m0):
        node = m0
        for p in path:
            node = node[p]
        for kind, new in _mutations(node):
            m = json.loads(text0)
            _apply(m, path, kind, new)
            (b / "manifest.json").write_text(json.dumps(m))
            write_identity(b)
            with pytest.raises(BundleError, match="is not the expected identity"):
                load_bundle(b, sha256=original)
            n += 1
    assert n > 100


def test_fuzz_every_lm_manifest_field(tmp_path):
    draft = _copy(DEFAULT_DRAFT, tmp_path / "draft")

    def load(folder):
        lm = OnnxLM(folder)
        lm.tokenizer()
        return lm
    loaded = _fuzz(draft, load, LM_INFO)
    assert all(_allowed(p, k, LM_INFO) for p, k in loaded)


# --- LM bundles and checkpoints ------------------------------------------------------------------

def test_lm_bundle_tokenizer_must_be_vouched_for(tmp_path):
    b = edit_manifest(_copy(DEFAULT_DRAFT, tmp_path / "d"),
                      lambda m: m["files"].pop("tokenizer.json"))
    lm = OnnxLM(b)  # token ids still work
    with pytest.raises(BundleError, match="tokenizer"):
        lm.tokenizer()


def test_lm_bundle_shapes_must_be_the_graphs(tmp_path):
    b = edit_manifest(_copy(DEFAULT_DRAFT, tmp_path / "d"), lambda m: m.update(n_kv_heads=3))
    with pytest.raises(BundleError, match="n_kv_heads|shape") as e:
        OnnxLM(b)
    _one_line(e.value)
    b2 = edit_manifest(_copy(DEFAULT_DRAFT, tmp_path / "d2"), lambda m: m.update(vocab_size=4000))
    with pytest.raises(BundleError, match="vocab_size"):
        OnnxLM(b2)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_crafted_lm_config_is_refused_before_allocating(tmp_path):
    pytest.importorskip("torch")
    from heron.models.lm import checkpoint

    src = REPO / "models" / "weights" / "lm-nano"
    before = _rss_mb()
    for change, match in (({"n_layers": 100000, "dim": 100000}, "n_layers|dim|parameters"),
                          ({"n_layers": 200}, "does not match"),
                          ({"dim": "wide"}, "dim"),
                          ({"rope_theta": float("nan")}, "rope_theta")):
        b = _copy(src, tmp_path / f"c{len(os.listdir(tmp_path))}")
        doc = json.loads((b / "config.json").read_text())
        doc["config"].update(change)
        (b / "config.json").write_text(json.dumps(doc))
        with pytest.raises(ValueError, match=match) as e:
            checkpoint.load(b)
        _one_line(e.value)
    assert _rss_mb() - before < 500, "a refused config must not allocate its model"


def test_hf_config_missing_keys_is_one_line(tmp_path):
    pytest.importorskip("torch")
    from heron.models.lm.hf import load_hf

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mixtral", "hidden_size": 64}))
    with pytest.raises(ValueError, match="lacks the key") as e:
        load_hf(tmp_path)
    _one_line(e.value)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match="JSON"):
        load_hf(tmp_path)


# --- export writes under --out only --------------------------------------------------------------

def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_writes_under_out_only_and_keeps_the_checkpoints_calibration(tmp_path, capfd):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed: the background bank is synthesized speech")
    from heron.export.kws_bundle import build_kws_bundles
    from heron.models.conformer import PRESETS, GatedConformer
    from heron.models.train_kws import TrainConfig, save_checkpoint

    torch.manual_seed(0)
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, GatedConformer(PRESETS["tiny"]), None, 1, TrainConfig(model=PRESETS["tiny"]))
    cal = {"slope": 2.0, "per_phoneme": -0.3, "offset": -6.0, "threshold": 0.35, "fitted_on": "a test"}
    (ckpt / "calibration.json").write_text(json.dumps({**cal, "matcher": {"posterior_weight": 2.0}}))
    before = _tree(ckpt)
    from heron.runtime.ctc_kws import MatcherOptions
    with pytest.raises(ValueError, match="other options need --recalibrate"):  # refused before any work
        build_kws_bundles(ckpt, tmp_path / "other", target="onnx", matcher_options=MatcherOptions(posterior_weight=1.0))
    assert not (tmp_path / "other").exists()
    out = tmp_path / "out"
    capfd.readouterr()
    (bundle,) = build_kws_bundles(ckpt, out, target="onnx", int8_only=True)
    chatter = capfd.readouterr().err
    assert "torchvision" not in chatter and "Warning" not in chatter, chatter[-500:]  # the exporters kept quiet
    assert _tree(ckpt) == before, "export wrote into the checkpoint folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out"]
    assert not (out / ".heron-export-work").exists()
    man = json.loads((bundle / "manifest.json").read_text())
    assert man["calibration"] == {**cal, "znorm": True}
    assert man["matcher"]["posterior_weight"] == 2.0  # the options the calibration was fitted with
    sp = KeywordSpotter.load(bundle)
    assert sp.background is not None and sp.enroll("hey heron").threshold == pytest.approx(0.35)
    assert sp.matcher_options.posterior_weight == 2.0


def test_shipped_checkpoint_calibration_is_the_shipped_bundles():
    from heron.runtime.ctc_kws import MatcherOptions

    manifest = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
    shipped = manifest["calibration"]
    ckpt = json.loads((REPO / "models" / "weights" / "kws-base" / "calibration.json").read_text())
    fitted_with = ckpt.pop("matcher", {})  # the matcher options the calibration was fitted with
    assert {**ckpt, "znorm": True} == shipped  # so `heron kws export` of the default checkpoint reproduces it
    assert manifest["matcher"] == MatcherOptions(**fitted_with).to_dict()
    assert 0.0 < shipped["threshold"] < 1.0


RUNTIME_CONSTANTS = [("phonemes", "classes"), ("phonemes", "blank"), ("gates", "names"), ("gates", "threshold"),
                     ("gates", "layers"), ("matcher", "gap_penalty"), ("matcher", "frames_base"),
                     ("matcher", "frames_per_phoneme"), ("matcher", "posterior_weight"), ("sample_rate",),
                     ("chunk_samples",), ("frame_seconds",),
                     ("frames_per_chunk",), ("features", "n_fft"), ("features", "hop"), ("features", "n_mels"),
                     ("calibration", "slope"), ("calibration", "offset"), ("calibration", "per_phoneme"),
                     ("calibration", "threshold"), ("calibration", "znorm"), ("encoder", "state_pairs")]


@pytest.mark.parametrize("path", RUNTIME_CONSTANTS, ids=lambda p: ".".join(p))
def test_the_manifest_carries_every_constant_the_runtime_uses(shipped, tmp_path, path):
    """The shipped bundle describes itself (the phoneme class table, gate names and threshold, matcher
    options, rates); a copy without any one of them is refused by name, never filled with a default."""
    m = json.loads((shipped / "manifest.json").read_text())
    node = m
    for p in path:
        node = node[p]  # present in the shipped manifest
    assert m["phonemes"]["classes"][1:] == __import__("heron.runtime.phonemes", fromlist=["PHONEMES"]).PHONEMES

    def drop(doc):
        target = doc
        for p in path[:-1]:
            target = target[p]
        del target[path[-1]]
    b = edit_manifest(_copy(shipped, tmp_path / "b"), drop)
    with pytest.raises(BundleError, match=path[-1]) as e:
        _load_kws(b)
    _one_line(e.value)


# --- what the manifest's numbers mean, with or without a bank (issue 21, item 1) ------------------

def _resign_file(folder, key, name):
    from heron.runtime.bundle import path_size, sha256_path

    return lambda m: m["files"][key].update(sha256=sha256_path(folder / name), bytes=path_size(folder / name))


def test_no_bank_and_a_calibration_that_fires_on_everything_is_refused(shipped, tmp_path):
    """The red team's attack: delete the bank, znorm=false, slope 0.001, offset 20, re-sign: silence scored 1.0."""
    b = _copy(shipped, tmp_path / "b")
    (b / "background.npy").unlink()

    def change(m):
        m["files"].pop("background")
        m["calibration"].update(znorm=False, slope=0.001, offset=20.0)
    edit_manifest(b, change)
    with pytest.raises(BundleError, match="fires on anything") as e:
        _load_kws(b)
    _one_line(e.value)


@pytest.mark.parametrize("bank, message", [
    (np.zeros((1, 1, 40)), "1 segments of 1 frames"),
    (np.zeros((120, 80, 40)), "not log-probabilities"),
])
def test_background_bank_shape_and_content_are_bounded(shipped, tmp_path, bank, message):
    b = _copy(shipped, tmp_path / "b")
    np.save(b / "background.npy", bank.astype(np.float16), allow_pickle=False)
    edit_manifest(b, _resign_file(b, "background", "background.npy"))
    with pytest.raises(BundleError, match=message) as e:
        _load_kws(b)
    _one_line(e.value)


def test_a_bank_that_makes_silence_fire_is_caught_at_load(shipped, tmp_path):
    """A well-formed bank of pure blank frames: every keyword's background scores sit at (or near) the
    floor with the smallest spread, so any real frame is many deviations above it. The load-time probe
    refuses it: digital silence fires (matcher without a posterior weight), or common keywords score the
    floor on the whole bank (with one, where silence scores the floor too)."""
    b = _copy(shipped, tmp_path / "b")
    bank = np.full((120, 80, 40), -30.0, np.float16)
    bank[:, :, 0] = 0.0
    np.save(b / "background.npy", bank, allow_pickle=False)
    edit_manifest(b, _resign_file(b, "background", "background.npy"))
    with pytest.raises(BundleError, match="fires on digital silence|not background speech") as e:
        _load_kws(b)
    _one_line(e.value)
    edit_manifest(b, lambda m: m["matcher"].update(posterior_weight=0.0))  # the other rule, without the weight
    with pytest.raises(BundleError, match="fires on digital silence|not background speech"):
        _load_kws(b)


@pytest.mark.parametrize("change, message", [
    (lambda m: m["phonemes"]["classes"].__setitem__(slice(1, None), m["phonemes"]["classes"][1:][::-1]), "heron's order"),
    (lambda m: m["gates"].update(threshold=0.999), "gates.threshold"),
])
def test_reordered_class_table_and_moved_gate_threshold_are_refused(shipped, tmp_path, change, message):
    b = edit_manifest(_copy(shipped, tmp_path / "b"), change)
    with pytest.raises(BundleError, match=message) as e:
        _load_kws(b)
    _one_line(e.value)


def test_array_header_claiming_more_than_the_file_holds_is_refused_before_allocating(shipped, tmp_path):
    """A background.npy whose header claims (99999, 99999, 40) used to raise MemoryError (745 GiB)."""
    b = _copy(shipped, tmp_path / "b")
    hdr = "{'descr': '<f2', 'fortran_order': False, 'shape': (99999, 99999, 40), }"
    hdr += " " * (64 - (10 + len(hdr) + 1) % 64) + "\n"
    (b / "background.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(hdr).to_bytes(2, "little") + hdr.encode() + bytes(64))
    edit_manifest(b, _resign_file(b, "background", "background.npy"))
    with pytest.raises(BundleError, match="header claims shape") as e:
        _bounded(_load_kws, b)
    _one_line(e.value)


def test_deeply_nested_manifest_json_is_refused_in_one_line(shipped, tmp_path):
    """100,000 nested brackets used to raise RecursionError out of json.loads."""
    from heron.runtime.bundle import write_identity
    from heron.runtime.keyword_file import KeywordFileError, parse_keyword_file

    b = _copy(shipped, tmp_path / "b")
    (b / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    write_identity(b)
    with pytest.raises(BundleError, match="nested too deeply") as e:
        load_bundle(b)
    _one_line(e.value)
    import hashlib
    body = b"[" * 30_000 + b"]" * 30_000
    header = ('{"format":"heron-keyword/1","sha256":"%s"}' % hashlib.sha256(body).hexdigest()).encode()
    with pytest.raises(KeywordFileError, match="not a heron keyword file"):
        parse_keyword_file(header + b"\n" + body + b"\n", "k.kw")
