"""Issue 12, problem 7: Python API inputs are read one way everywhere or refused clearly, never truncated silently."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workbench.errors import InputError
from workbench.inputs import as_head, as_heads, parse_head
from workbench.interventions import (AddToHead, KnockOutKeys, ScaleHead, ScaleKeys, ZeroHead, apply, tl_apply)
from workbench.patterns import capture, select_heads
from workbench.sweeps import parse_heads as parse_cell
from workbench.widgets import parse_heads as widget_heads


def test_one_head_syntax_everywhere(llama):
    assert parse_head("L1H2") == parse_head("l1h2") == parse_head("1.2") == parse_head("1,2") == (1, 2)
    assert as_head((1, 2)) == as_head(np.array([1, 2])) == as_head(torch.tensor([1, 2])) == as_head("L1H2") == (1, 2)
    assert as_heads("L1H2, 0.3") == as_heads(["L1H2", (0, 3)]) == widget_heads("1.2 0.3") == [(1, 2), (0, 3)]
    assert parse_cell("L1H2+0.3") == ((0, 3), (1, 2))
    # strings work where the API takes heads: capture and intervention specs
    assert select_heads(llama, ["L1H2", "0.3"]) == {0: [3], 1: [2]}
    assert ZeroHead(["L1H2"]).heads == ZeroHead([(1, 2)]).heads == ((1, 2),)
    ids = torch.randint(4, 90, (1, 9))
    assert torch.equal(capture(llama, ids, heads=["L1H2"]).pattern(1, 2), capture(llama, ids, heads=[(1, 2)]).pattern(1, 2))


@pytest.mark.parametrize("bad, message", [
    ("LxHy", "write a head as LAYER.HEAD or LxHy, e.g. 18.6 or L18H6"),
    ("L18", "e.g. 18.6 or L18H6"),
    ("18.6.1", "e.g. 18.6 or L18H6"),
])
def test_unreadable_head_strings_name_the_format(bad, message):
    with pytest.raises(InputError, match=message):
        parse_head(bad)


@pytest.mark.parametrize("heads, message", [
    ([(1,)], "a head is a \\(layer, head\\) pair of two numbers"),
    ([(1, 2, 3)], "a head is a \\(layer, head\\) pair of two numbers"),
    ([(0.7, 1.9)], "must be a whole number, got 0.7"),
    ([(0, 1.5)], "must be a whole number, got 1.5"),
    ((1, 2), "is one pair of numbers: give a list of heads"),
    ([None], "cannot read head None"),
])
def test_malformed_heads_are_refused_not_truncated(llama, heads, message):
    with pytest.raises(InputError, match=message):
        capture(llama, torch.randint(4, 90, (1, 5)), heads=heads)
    with pytest.raises(InputError, match=message):
        ZeroHead(heads)


def test_integral_floats_and_numpy_ints_are_whole_numbers(llama):
    assert select_heads(llama, [(1.0, np.int64(2))]) == {1: [2]}


def test_capture_rows_and_batch_size_are_checked(llama):
    ids = torch.randint(4, 90, (2, 6))
    with pytest.raises(InputError, match=r"rows=\[\] selects no query position"):
        capture(llama, ids, heads=[(0, 0)], rows=[])
    with pytest.raises(InputError, match="whole number, got 1.5"):
        capture(llama, ids, heads=[(0, 0)], rows=[1.5])
    with pytest.raises(InputError, match="rows must lie in 0..5"):
        capture(llama, ids, heads=[(0, 0)], rows=[6])
    for bad in (-1, 0):
        with pytest.raises(InputError, match=f"batch_size .* must be at least 1, got {bad}"):
            capture(llama, ids, heads=[(0, 0)], batch_size=bad)
    one = capture(llama, ids, heads=[(0, 0)], rows=torch.tensor([2, 5]), batch_size=1)
    assert one.pattern(0, 0).shape == (2, 2, 6)


@pytest.mark.parametrize("make", [
    lambda f: ScaleHead([(0, 1)], factor=f),
    lambda f: AddToHead([(0, 1)], factor=f, values={(0, 1): torch.zeros(8)}),
    lambda f: ScaleKeys([(0, 1)], keys=(0,), factor=f),
])
@pytest.mark.parametrize("factor", [math.nan, math.inf, -math.inf, "2"])
def test_non_finite_factors_are_refused(make, factor):
    with pytest.raises(InputError, match="factor must be a finite number"):
        make(factor)


def test_scale_keys_factor_must_not_be_negative():
    with pytest.raises(InputError, match="ScaleKeys factor must be at least 0"):
        ScaleKeys([(0, 1)], keys=(0,), factor=-0.5)
    assert ScaleKeys([(0, 1)], keys=(0,), factor=0).log_factor == -math.inf  # 0 = knock-out, allowed


def test_knocking_out_keys_beyond_the_context_is_an_error(llama):
    ids = torch.randint(4, 90, (1, 12))
    with pytest.raises(InputError, match=r"KnockOutKeys keys \[999\] lie outside the context of 12 tokens"):
        with apply(llama, KnockOutKeys([(0, 1)], keys=[999])):
            llama.logits(ids)
    with pytest.raises(InputError, match=r"ScaleKeys keys \[-13\] lie outside"):
        with apply(llama, ScaleKeys([(0, 1)], keys=[-13], factor=0.5)):
            llama.logits(ids)
    with pytest.raises(InputError, match="outside the context"):
        with tl_apply(llama, KnockOutKeys([(0, 1)], keys=[999])) as bridge:
            bridge(ids)
    with pytest.raises(InputError, match="needs key positions"):
        KnockOutKeys([(0, 1)], keys=[])
    with pytest.raises(InputError, match="whole number"):
        KnockOutKeys([(0, 1)], keys=[1.5])
    with apply(llama, KnockOutKeys([(0, 1)], keys=[11, -12])):  # the edges are fine
        assert torch.isfinite(llama.logits(ids)).all()


def test_nested_scale_head_compounds_as_documented(llama):
    """Documented choice: specs compose, so ScaleHead(0.5) inside ScaleHead(0.5) scales the head by 0.25."""
    ids = torch.randint(4, 90, (2, 10))
    with apply(llama, ScaleHead([(1, 2)], factor=0.25)):
        quarter = llama.logits(ids)
    with apply(llama, ScaleHead([(1, 2)], factor=0.5)):
        half = llama.logits(ids)
        with apply(llama, ScaleHead([(1, 2)], factor=0.5)):
            nested = llama.logits(ids)
    with apply(llama, ScaleHead([(1, 2)], factor=0.5), ScaleHead([(1, 2)], factor=0.5)):
        together = llama.logits(ids)
    assert torch.allclose(nested, quarter, atol=1e-5) and torch.allclose(together, quarter, atol=1e-5)
    assert (half - quarter).abs().max() > 1e-4
    import workbench.interventions.specs as specs

    assert "ScaleHead(0.5)`` inside ``ScaleHead(0.5)`` scales by 0.25" in specs.__doc__


def test_the_same_hook_object_is_not_applied_twice(llama):
    """Re-entering with the very same hook does not compound (hooks_active skips a hook already active)."""
    from workbench.interventions import InterventionHook
    from workbench.models.attention import hooks_active

    ids = torch.randint(4, 90, (1, 8))
    hook = InterventionHook(llama, [ScaleHead([(1, 2)], factor=0.5)])
    with hooks_active(hook):
        once = llama.logits(ids)
        with hooks_active(hook):
            assert torch.equal(llama.logits(ids), once)
