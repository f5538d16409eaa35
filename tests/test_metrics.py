"""Metrics against hand-computed cases."""
import numpy as np
import pytest

from heron.runtime import metrics


def test_auc_hand_cases():
    assert metrics.auc([1, 2, 3], [0, 0.5]) == 1.0
    assert metrics.auc([0], [1]) == 0.0
    assert metrics.auc([1], [1]) == 0.5  # a tie counts half
    # pos {0.2, 0.8} vs neg {0.5, 0.9}: pairs won = (0.8>0.5) = 1 of 4
    assert metrics.auc([0.2, 0.8], [0.5, 0.9]) == 0.25


def test_eer_hand_case():
    # threshold 0.7: FNR = 1/4 (0.3 rejected), FPR = 1/4 (0.75 accepted) -> EER 0.25
    e, t = metrics.eer([0.9, 0.8, 0.7, 0.3], [0.1, 0.2, 0.4, 0.75])
    assert e == pytest.approx(0.25) and t == pytest.approx(0.7)
    e, _ = metrics.eer([1.0, 0.9], [0.1, 0.2])
    assert e == 0.0


def test_metric_errors():
    with pytest.raises(ValueError):
        metrics.auc([], [1])
    with pytest.raises(ValueError):
        metrics.eer([1], [])


def test_detections_refractory():
    times = np.arange(10) * 0.1
    scores = np.array([0, 1, 0, 1, 0, 0, 0, 0, 0, 1.0])
    assert metrics.detections(times, scores, 0.5, 0.0).tolist() == pytest.approx([0.1, 0.3, 0.9])
    assert metrics.detections(times, scores, 0.5, 0.5).tolist() == pytest.approx([0.1, 0.9])


def test_stream_scoring_counts_hits_false_accepts_and_latency():
    times = np.arange(0, 3600, 0.5)
    scores = np.zeros_like(times)
    labels = [(100.0, 101.0), (200.0, 201.0), (300.0, 301.0)]
    scores[times == 101.5] = 0.9  # hit, 0.5 s after the keyword's end
    scores[times == 200.5] = 0.9  # hit, 0.5 s before the keyword ends (negative latency)
    scores[times == 1000.0] = 0.9  # false accept
    scores[times == 2000.0] = 0.6  # false accept at low thresholds only
    r = metrics.score_stream(times, scores, labels, 3600.0, 0.8)
    assert (r.true_accepts, r.false_accepts, r.n_keywords) == (2, 1, 3)
    assert r.frr == pytest.approx(1 / 3) and r.fa_per_hour == pytest.approx(1.0)
    assert sorted(r.latencies_s) == pytest.approx([-0.5, 0.5])
    curve = metrics.det_curve(times, scores, labels, 3600.0, thresholds=[0.5, 0.8, 0.95])
    assert [c.false_accepts for c in curve] == [2, 1, 0]
    best = metrics.frr_at_fa_per_hour(curve, 1.0)
    assert best.threshold == 0.8
    with pytest.raises(ValueError):
        metrics.frr_at_fa_per_hour(curve[:1], 0.5)


def test_det_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    times = np.arange(0, 100, 0.5)
    scores = np.random.default_rng(0).random(times.size)
    curve = metrics.det_curve(times, scores, [(10, 11)], 100.0)
    out = tmp_path / "det.png"
    from heron.models.plots import plot_det

    plot_det({"x": curve}, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
