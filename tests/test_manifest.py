"""The bundle schema (heron.runtime.manifest): one reader/writer for KWS and LM manifests."""
import json
from dataclasses import replace

import pytest

from heron.runtime.bundle import DEFAULT_BUNDLE, load_bundle, write_manifest
from heron.runtime.lm import DEFAULT_DRAFT
from heron.runtime.manifest import (IDENTITY, LM_FORMAT, LM_FORMAT_V1, MANIFEST, BundleError, FileEntry, KwsManifest,
                                    LMManifest, file_table)


def _doc(folder):
    return json.loads((folder / MANIFEST).read_text())


def test_kws_schema_reads_and_writes_the_shipped_manifest_exactly():
    """to_dict(from_dict(m)) is the manifest export wrote: the schema is the one place that knows the layout."""
    doc = _doc(DEFAULT_BUNDLE)
    m = KwsManifest.from_dict(doc, "shipped")
    assert m.to_dict() == doc and list(m.to_dict()) == list(doc)
    assert m.sample_rate == 16000 and m.layers == 4 and m.classes[m.blank] == "<blank>"
    assert m.speech_gate is not None and m.calibration.znorm and m.has("background")
    assert load_bundle(DEFAULT_BUNDLE).manifest == m


def test_lm_schema_reads_format_1_into_the_file_table_and_writes_format_2():
    doc = _doc(DEFAULT_DRAFT)
    m = LMManifest.from_dict(doc, "draft")
    assert m.format == LM_FORMAT and m.to_dict() == doc  # the shipped draft carries the file table
    assert set(m.files) >= {"model.onnx", "tokenizer.json"} and all(e.path == k for k, e in m.files.items())
    old = {k: v for k, v in doc.items() if k != "files"}  # the same bundle as format /1 wrote it
    old.update(format=LM_FORMAT_V1, sha256={k: e.sha256 for k, e in m.files.items()},
               bytes={k: e.bytes for k, e in m.files.items()})
    m1 = LMManifest.from_dict(old, "old")
    assert m1.files == m.files and m1.to_dict() == old  # read into the file table, written back as it was
    assert replace(m1, format=LM_FORMAT).to_dict() == doc  # written as /2: the shipped draft's manifest


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(colour="blue"), "do.*not know.*colour"),
    (lambda d: d["calibration"].update(slop=1.0), "calibration.*not know.*slop"),
    (lambda d: d["files"]["background"].update(mode="rw"), "background.*not know.*mode"),
    (lambda d: d["encoder"].update(extra=[1]), "encoder.*not know"),
    (lambda d: d.update(verifier={"max_frames": 10, "margin_frames": 2, "min_first_stage": 0.1}), "verifier"),
])
def test_kws_schema_refuses_unknown_and_misplaced_fields(edit, match):
    doc = _doc(DEFAULT_BUNDLE)
    edit(doc)
    with pytest.raises(BundleError, match=match) as e:
        KwsManifest.from_dict(doc, "m")
    assert "\n" not in str(e.value)


def test_lm_schema_refuses_files_away_from_their_names_and_a_missing_default():
    m = LMManifest.from_dict(_doc(DEFAULT_DRAFT), "draft")
    doc = replace(m, format=LM_FORMAT).to_dict()
    doc["files"]["model.onnx"]["path"] = "../model.onnx"
    with pytest.raises(BundleError, match="own name"):
        LMManifest.from_dict(doc, "m")
    with pytest.raises(BundleError, match="default_weights"):
        LMManifest.from_dict({**replace(m, format=LM_FORMAT).to_dict(), "default_weights": "int4"}, "m")


def test_write_manifest_checks_before_writing(tmp_path):
    (tmp_path / "a.onnx").write_bytes(b"graph")
    table = file_table(tmp_path, {"model.onnx": "a.onnx"})
    assert table["model.onnx"] == FileEntry("a.onnx", FileEntry.of(tmp_path, "a.onnx").sha256, 5)
    m = replace(LMManifest.from_dict(_doc(DEFAULT_DRAFT), "draft"), format=LM_FORMAT, files=table)
    with pytest.raises(BundleError, match="own name"):  # refused: nothing is written
        write_manifest(tmp_path, m)
    assert not (tmp_path / MANIFEST).exists() and not (tmp_path / IDENTITY).exists()
    (tmp_path / "model.onnx").write_bytes(b"graph")
    good = replace(m, files=file_table(tmp_path, {"model.onnx": "model.onnx"}))
    identity = write_manifest(tmp_path, good)
    assert (tmp_path / IDENTITY).read_text().strip() == identity
    assert LMManifest.from_dict(_doc(tmp_path), "w") == good
