"""DynaMoE conversion mechanics on a tiny dense model: unit ordering keeps the function, nested slices
are prefix sub-networks, the sensitivity knob moves the active width, and the comparison runs."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from heron.models.lm import dynamoe  # noqa: E402
from heron.models.lm.model import Transformer, preset  # noqa: E402
from heron.models.lm.train import windows  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = Transformer(preset("tiny", n_experts=0, n_layers=2, ffn_dim=128, vocab_size=200)).eval()
    ids = (np.arange(6000) * 7 % 200).astype(np.int32)
    return m, ids, windows(ids, 32, 8), windows(ids[::-1].copy(), 32, 8)


def test_unit_ordering_keeps_outputs(setup):
    import copy
    m, _, held, calib = setup
    ordered = copy.deepcopy(m)
    dynamoe.order_units(ordered, calib)
    with torch.no_grad():
        assert (ordered(held[:2, :-1]).logits - m(held[:2, :-1]).logits).abs().max() < 1e-4
        ffn = ordered.layers[0].ffn
        x = torch.randn(5, m.cfg.dim)
        # the masked full FFN equals the sliced sub-network (what an expert of width 32 computes)
        r = dynamoe.DifficultyRouters(m.cfg.dim, 2, [32, 128])
        r.mode, r.static_level = "static", 0
        assert torch.allclose(r(ffn, x[None], 0)[0], dynamoe.ffn_at_width(ffn, x, 32), atol=1e-5)
        assert torch.allclose(dynamoe.ffn_at_width(ffn, x, 128), ffn(x), atol=1e-6)


def test_nested_widths_wraps_the_model_and_restores_it(setup):
    """DynaMoE's widths are a wrapper around the model (its dense FFNs stand in for the block), not a flag
    of its forward; the model's own modules come back afterwards, also after an error."""
    m, _, held, _ = setup
    x = held[:2, :-1]
    r = dynamoe.DifficultyRouters(m.cfg.dim, 2, [32, 128])
    own = [b.ffn for b in m.layers]
    with torch.no_grad():
        full = m(x).logits
        r.mode = "full"
        with dynamoe.nested_widths(m, r):
            assert torch.allclose(m(x).logits, full, atol=1e-6)
            r.mode, r.static_level = "static", 0
            narrow = m(x).logits
        assert (narrow - full).abs().max() > 1e-3  # a quarter of the units computes something else
        with pytest.raises(RuntimeError, match="boom"), dynamoe.nested_widths(m, r):
            raise RuntimeError("boom")
    assert [b.ffn for b in m.layers] == own and not any(p is q for p in r.parameters() for q in m.parameters())


def test_sensitivity_moves_active_width_and_run_reports_both_curves(setup):
    m, ids, held, calib = setup
    report, model, routers = dynamoe.run(m, ids, calib, held, dynamoe.DynaMoEOptions(steps=3, router_steps=20, batch=2),
                                         seq_len=32, log=lambda *a: None)
    fr = [r["ffn_active_frac"] for r in report["dynamoe"]]
    assert fr == sorted(fr) and fr[0] < fr[-1] <= 1.0  # higher sensitivity -> larger experts
    assert [round(r["ffn_active_frac"], 3) for r in report["static"]] == [0.125, 0.25, 0.5, 0.75, 1.0]
    assert set(report["at_half"]) >= {"dynamoe_ppl", "static_ppl", "dense_ppl"}
    with pytest.raises(ValueError, match="dense"):
        dynamoe.run(Transformer(preset("tiny")), ids, calib, held)
