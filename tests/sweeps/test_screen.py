"""Attribution screening (AtP, AtP*) against real patching: slopes, the QK fix on a saturated head, GradDrop on a
planted cancellation, and ``run_sweep(screen=..., verify=K)`` against a plain exact sweep of the same cells."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM

from tests.conftest import tiny_llama, tiny_tokenizer
from workbench.errors import InputError
from workbench.interventions import AddToHead, apply, attribution_patching
from workbench.interventions.patching import GradProbe, frozen_parameters
from workbench.models import from_model
from workbench.models.attention import hooks_active
from workbench.patterns import capture
from workbench.sweeps import (Mean, Patch, Resample, Zero, ZeroQueries, baseline_values, evaluate_cells, load_sweep,
                              run_sweep, screen_heads, single_heads, verification_cells)
from workbench.sweeps.report import screen_table, sweep_report
from workbench.sweeps.residual import embed, logits_from, run_layers
from workbench.sweeps.screen import check_fixes, method_name
from workbench.tasks import get_metric, induction_task
from workbench.tasks.base import gather_targets

LOSS = get_metric("loss")


def loss64(target_logits, batch):
    """The loss metric in float64 (finite differences of float32 losses drown in rounding)."""
    lp = target_logits.double().log_softmax(-1).gather(-1, batch.target_ids[..., None])[..., 0]
    return -lp.mean(1)


def test_run_layers_to_the_end_is_the_stream_before_the_final_norm():
    subject = tiny_llama(seed=1, n_layers=3)
    ids = torch.randint(4, subject.vocab_size, (2, 9))
    mask = torch.ones_like(ids)
    h = embed(subject, ids)
    for layer in range(subject.n_layers):
        h = run_layers(subject, h, mask, layer, layer + 1)
    assert torch.allclose(logits_from(subject, h, mask, subject.n_layers), subject.logits(ids), atol=1e-5)


def test_fix_names():
    assert check_fixes("qk, graddrop") == ("graddrop", "qk") and check_fixes("none") == () and check_fixes(None) == ()
    assert [method_name(f) for f in ((), ("qk",), ("graddrop",), ("qk", "graddrop"))] == [
        "atp", "atp+qk", "atp+graddrop", "atp*"]
    with pytest.raises(InputError, match="unknown AtP"):
        check_fixes("qk,nope")


def test_patch_screen_equals_attribution_patching():
    """The screen's activation-patching estimate is the (tested) attribution_patching of the interventions layer."""
    subject = tiny_llama(seed=5, n_layers=3)
    base = induction_task(subject, 4, 8, seed=0, filter=False).batch
    source = induction_task(subject, 4, 8, seed=1, filter=False).batch
    est = screen_heads(subject, base, Patch(source), [LOSS], fixes=())
    want = attribution_patching(subject, base.input_ids, source.input_ids,
                                lambda logits: LOSS(gather_targets(logits, base), base))
    np.testing.assert_allclose(est.matrix("loss"), want, atol=1e-6)
    assert np.abs(want).max() > 1e-4


@pytest.mark.parametrize("ablation", [Zero, Mean, lambda: Resample(seed=2)])
def test_screen_is_the_slope_of_real_ablation(ablation):
    """Each head's estimate is the finite-difference slope of the metric along z -> z' (the ablation's replacement)."""
    subject = tiny_llama(seed=7, n_layers=2)
    subject.model.double()
    batch = induction_task(subject, 4, 6, filter=False).batch
    abl, metric = ablation(), get_metric(loss64)
    est = screen_heads(subject, batch, abl, [metric], fixes=("qk",))  # the QK fix changes nothing for z ablations
    assert np.array_equal(est.atp["loss64"], screen_heads(subject, batch, abl, [metric], fixes=()).atp["loss64"])
    z = capture(subject, batch.input_ids, z=True, patterns=False).z
    prompts = torch.arange(len(batch))
    eps = 1e-2  # the attention math runs in float32 even for a float64 model: smaller steps drown in rounding
    for layer, head in [(0, 1), (1, 3)]:
        delta = (abl.replacement(layer, z[layer], prompts) - z[layer])[:, :, head].double()
        ends = []
        for sign in (1, -1):
            with torch.no_grad(), apply(subject, AddToHead([(layer, head)], values={(layer, head): delta}, factor=sign * eps)):
                logits = subject.model(**batch.model_inputs(subject.device)).logits
            ends.append(loss64(gather_targets(logits, batch), batch))
        slope = ((ends[0] - ends[1]) / (2 * eps)).numpy()
        np.testing.assert_allclose(est.atp["loss64"][:, layer, head], slope, rtol=1e-2, atol=1e-6)


def _saturated():
    """A 2-layer Llama whose head L1H2 attends almost one-hot (queries scaled up), with a small output (so the
    model after the head's output is nearly linear in it): where linearising the softmax fails."""
    subject = tiny_llama(seed=3, n_layers=2)
    subject.model.double()
    attn, d = subject.attention_module(1), subject.d_head
    with torch.no_grad():
        attn.q_proj.weight[2 * d:3 * d] *= 3000
        attn.o_proj.weight[:, 2 * d:3 * d] *= 0.2
    return subject


def test_qk_fix_equals_exact_query_ablation_on_a_saturated_head():
    subject = _saturated()
    batch = induction_task(subject, 4, 8, filter=False).batch
    pattern = capture(subject, batch.input_ids).patterns[1][:, 2]
    assert pattern.max(-1).values.median() > 0.999  # saturated: the softmax's gradient is ~0 at the clean run
    base = baseline_values(subject, batch, [LOSS])["loss"]
    exact = next(iter(evaluate_cells(subject, batch, [((1, 2),)], ZeroQueries(), [LOSS]))).values["loss"] - base
    fixed = screen_heads(subject, batch, "query", [LOSS], fixes=("qk",)).cell(((1, 2),), "loss")
    plain = screen_heads(subject, batch, "query", [LOSS], fixes=()).cell(((1, 2),), "loss")
    np.testing.assert_allclose(fixed, exact, rtol=0.05)  # exact but for the (small) curvature after z
    assert fixed.mean() == pytest.approx(exact.mean(), rel=0.02)
    assert abs(plain.mean() - exact.mean()) > 0.5 * abs(exact.mean())  # plain AtP misses most of the effect


def _dropped_reference(subject, batch, abl, metric, d):
    """I_d by hand: a module hook that cuts the gradient through decoder layer d's output, then one backward."""
    layer_d = subject.layers[d]

    def cut(module, args, kwargs, out):
        hidden = args[0] if args else kwargs["hidden_states"]
        res = out[0] if isinstance(out, tuple) else out
        res = hidden + (res - hidden).detach()
        return (res, *out[1:]) if isinstance(out, tuple) else res

    handle = layer_d.register_forward_hook(cut, with_kwargs=True)
    probe = GradProbe()
    try:
        with torch.enable_grad(), hooks_active(probe), frozen_parameters(subject.model):
            logits = subject.model(**batch.model_inputs(subject.device)).logits
            metric(gather_targets(logits, batch), batch).sum().backward()
    finally:
        handle.remove()
    prompts = torch.arange(len(batch))
    grads = [torch.zeros_like(probe.z[l]) if probe.probes[l].grad is None else probe.probes[l].grad
             for l in range(subject.n_layers)]  # layer d itself: no gradient reaches it
    return np.stack([((abl.replacement(l, probe.z[l], prompts) - probe.z[l]) * grads[l]).sum((1, 3)).numpy()
                     for l in range(subject.n_layers)], 1)  # (B, L, H)


def test_graddrop_terms_equal_a_hand_written_dropped_backward():
    subject = tiny_llama(seed=11, n_layers=3)
    batch = induction_task(subject, 3, 6, filter=False).batch
    est = screen_heads(subject, batch, Zero(), [LOSS], fixes=("graddrop",))
    for d in range(subject.n_layers):
        want = _dropped_reference(subject, batch, Zero(), LOSS, d)
        np.testing.assert_allclose(est.dropped["loss"][d], want, atol=1e-6)
    assert np.all(est.dropped["loss"][1][:, 1] == 0) and np.abs(est.dropped["loss"][2][:, :2]).max() > 1e-5
    # GradDrop's estimate: (1/(L-1)) sum_d |I_d|, averaged over prompts, with the sign of the AtP mean
    got = est.cell(((0, 2),), "loss")
    want = np.abs(est.dropped["loss"][:, :, 0, 2]).sum(0) / 2 * np.sign(est.atp["loss"][:, 0, 2].mean())
    np.testing.assert_allclose(got, want)


def _planted(beta: float):
    """Head A = L0H0 writes a small vector into coordinates 0..7; head C = L1H0 (window 1: it attends to its own
    position) reads those coordinates and writes them back times -beta; the metric reads them (logit of token 5)."""
    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=4, head_dim=8, max_position_embeddings=512, sliding_window=1,
                        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = MistralForCausalLM(cfg).eval().double()
    eye = torch.eye(8, dtype=torch.float64)
    with torch.no_grad():
        first, second = model.model.layers
        model.model.embed_tokens.weight[:, :8] = 0
        first.self_attn.o_proj.weight.zero_()
        first.self_attn.o_proj.weight[:8, :8] = 0.01 * eye
        first.mlp.down_proj.weight.zero_()
        second.self_attn.v_proj.weight[:8] = 0
        second.self_attn.v_proj.weight[:8, :8] = eye
        second.self_attn.o_proj.weight.zero_()
        second.self_attn.o_proj.weight[:8, :8] = -beta * eye
        second.mlp.down_proj.weight.zero_()
        model.lm_head.weight[5, :8] = 3.0
    return from_model(model, tiny_tokenizer(96), name="planted-cancellation")


def test_graddrop_exposes_a_planted_cancellation():
    def logit5(target_logits, batch):
        return target_logits[:, :, 5].mean(1)
    metric = get_metric(logit5)

    def screened(beta):
        subject = _planted(beta)
        batch = induction_task(subject, 4, 8, filter=False).batch
        return subject, batch, screen_heads(subject, batch, Zero(), [metric], fixes=("graddrop",))

    lo, hi = 0.0, 0.03  # the canceller's strength where AtP of A crosses zero (secant steps)
    f = {b: screened(b)[2].atp["logit5"][:, 0, 0].mean() for b in (lo, hi)}
    for _ in range(4):
        beta = hi - f[hi] * (hi - lo) / (f[hi] - f[lo])
        lo, hi = hi, beta
        f[beta] = screened(beta)[2].atp["logit5"][:, 0, 0].mean()
    subject, batch, est = screened(hi)
    atp = est.atp["logit5"]
    direct = est.dropped["logit5"][1, :, 0, 0]  # layer 1 (the canceller's) dropped: A's direct effect
    np.testing.assert_allclose(direct, _dropped_reference(subject, batch, Zero(), metric, 1)[:, 0, 0], atol=1e-7)
    assert abs(atp[:, 0, 0].mean()) < 0.01 * abs(direct.mean())  # AtP: A looks irrelevant (cancelled)
    assert abs(direct.mean()) > 0.03
    gd = {cell: abs(est.cell(cell, "logit5").mean()) for cell in [((0, 0),), ((1, 0),)]}
    assert gd[((0, 0),)] == pytest.approx(np.abs(direct).mean())  # L = 2: (|I_0| + |I_1|) / 1 with I_0 = 0
    assert gd[((0, 0),)] > 0.5 * gd[((1, 0),)]  # GradDrop puts A on a par with its canceller C
    assert abs(atp[:, 0, 0].mean()) < 0.02 * abs(atp[:, 1, 0].mean())


def test_query_screen_refuses_what_it_cannot_do():
    subject = tiny_llama(seed=1, n_layers=2)
    batch = induction_task(subject, 3, 6, filter=False).batch
    with pytest.raises(InputError, match="not differentiable"):
        screen_heads(subject, batch, "zero", ["accuracy"])
    one = tiny_llama(seed=1, n_layers=1)
    with pytest.raises(InputError, match="at least 2 layers"):
        screen_heads(one, induction_task(one, 3, 6, filter=False).batch, "zero", [LOSS], fixes=("graddrop",))


def test_verification_cells_are_the_top_k_and_seeded_others():
    names = [f"c{i}" for i in range(10)]
    est = [0.1, -5.0, 0.2, 3.0, 0.0, -0.3, 2.0, 0.05, 0.01, 0.02]
    top, calib = verification_cells(names, est, 3, seed=1)
    assert top == ["c1", "c3", "c6"] and len(calib) == 3 and not set(calib) & set(top)
    assert (top, calib) == verification_cells(names, est, 3, seed=1)
    assert verification_cells(names, est, 0) == ([], [])
    assert len(verification_cells(names, est, 8)[1]) == 2


@pytest.fixture(scope="module")
def verified(tmp_path_factory):
    subject = tiny_llama(seed=4, n_layers=3)
    task = induction_task(subject, 5, 8, filter=False)
    out = tmp_path_factory.mktemp("screen") / "v"
    df = run_sweep(subject, task, out, intervention="mean", metrics=["loss", "answer_prob"], screen="attribution",
                   fixes="qk,graddrop", verify=3, seed=2)
    return subject, task, out, df


def test_verify_writes_estimates_and_exact_values_equal_to_a_plain_sweep(verified, tmp_path):
    subject, task, out, df = verified
    meta = df.attrs["sweep"]
    assert meta["settings"]["screen"] == {"method": "attribution", "fixes": ["graddrop", "qk"], "verify": 3}
    est, exact = df[df["method"] == "atp*"], df[df["method"] == "exact"]
    assert len(est) == 2 * subject.n_layers * subject.n_heads and est["cell"].str.endswith("@atp*").all()
    np.testing.assert_allclose(est["estimate"], est["effect"])
    top, calib = meta["screen"]["top"], meta["screen"]["calibration"]
    assert len(top) == 3 and len(calib) == 3 and sorted(exact["heads"].unique()) == sorted(top + calib)
    loss = est[est["metric"] == "loss"].set_index("heads")["effect"]
    assert set(top) == set(loss.abs().sort_values(ascending=False).index[:3])
    assert set(exact.loc[exact["heads"].isin(top), "verify"]) == {"top"}
    assert set(exact.loc[exact["heads"].isin(calib), "verify"]) == {"calibration"}
    for row in exact.itertuples():  # each exact row carries its cell's estimate
        assert row.estimate == est[(est["heads"] == row.heads) & (est["metric"] == row.metric)]["effect"].iloc[0]
    cells = [tuple((int(h.split("H")[0][1:]), int(h.split("H")[1])) for h in [name]) for name in top + calib]
    plain = run_sweep(subject, task, tmp_path / "plain", intervention="mean", metrics=["loss", "answer_prob"],
                      cells=cells, seed=2)
    assert (plain["method"] == "exact").all() and plain["estimate"].isna().all() and (plain["verify"] == "").all()
    got = exact.set_index(["heads", "metric"]).sort_index()
    want = plain.set_index(["heads", "metric"]).sort_index()
    np.testing.assert_allclose(got["value"], want["value"], atol=1e-6)
    np.testing.assert_allclose(np.stack(got["prompt_values"]), np.stack(want["prompt_values"]), atol=1e-6)


def test_a_verified_sweep_resumes_without_recomputing(verified):
    subject, task, out, df = verified
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("part-*.parquet")}
    again = run_sweep(subject, task, out, intervention="mean", metrics=["loss", "answer_prob"], screen="attribution",
                      fixes="qk,graddrop", verify=3, seed=2, resume=True)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("part-*.parquet")} == stamps
    pd.testing.assert_frame_equal(again.drop(columns="prompt_values"), df.drop(columns="prompt_values"))
    with pytest.raises(InputError, match="different screen"):
        run_sweep(subject, task, out, intervention="mean", metrics=["loss", "answer_prob"], screen="attribution",
                  fixes="qk", verify=3, seed=2, resume=True)


def test_estimate_vs_exact_table_and_report(verified):
    subject, task, out, df = verified
    table = screen_table(df, "loss")
    assert len(table) == subject.n_layers * subject.n_heads
    assert table["exact"].notna().sum() == 6 and set(table["verify"]) == {"top", "calibration", ""}
    html = sweep_report(out).read_text()
    assert "estimate vs exact" in html and "atp*" in html


def test_screen_only_and_bad_screen_input(tmp_path):
    subject = tiny_llama(seed=4, n_layers=2)
    task = induction_task(subject, 4, 6, filter=False)
    df = run_sweep(subject, task, tmp_path / "s", intervention="zero", screen="attribution")
    assert set(df["method"]) == {"atp+qk"} and len(df) == subject.n_layers * subject.n_heads
    with pytest.raises(InputError, match="needs a screen"):
        run_sweep(subject, task, tmp_path / "a", verify=2)
    with pytest.raises(InputError, match="unknown screen"):
        run_sweep(subject, task, tmp_path / "b", screen="magic")


def test_folders_without_the_method_columns_read_as_exact(tmp_path):
    """A format-2 folder written before the screen (no method / estimate / verify columns) reads as exact rows."""
    subject = tiny_llama(seed=4, n_layers=2)
    out = tmp_path / "old"
    run_sweep(subject, induction_task(subject, 4, 6, filter=False), out, intervention="zero",
              cells=single_heads(subject)[:3])
    for path in (out / "parts").glob("part-*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.drop_columns(["method", "estimate", "verify"]), path, write_page_checksum=True)
    df = load_sweep(out)
    assert len(df) == 3 and (df["method"] == "exact").all() and df["estimate"].isna().all() and (df["verify"] == "").all()


def test_sweep_viewer_shows_estimates_and_estimate_vs_exact(verified):
    from workbench.widgets import SweepViewer

    subject, task, out, df = verified
    v = SweepViewer(out, background=False)
    assert list(v.method.options) == ["exact", "atp*"] and v.method.value == "exact"
    assert np.isfinite(v.matrix()).sum() == 6  # the verified cells
    assert "estimate" in v.top.value and "calibration" in v.top.value
    assert len(v.screen.children) == 2 and "Spearman" in v.screen.children[0].value
    v.method.value = "atp*"
    est = df[(df["method"] == "atp*") & (df["metric"] == v.metric.value)]
    want = np.full((subject.n_layers, subject.n_heads), np.nan)
    want[est["layer"], est["head"]] = est["effect"]
    np.testing.assert_allclose(v.matrix(), want)
    v.close()
