"""Repeat surprisal (Armeni et al. 2022): noun surprisal against full logits, the ratio and its CI, and the
repeated << permuted < novel ordering on smollm2-135m."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import tiny_llama
from workbench.episodic.surprisal import median_ci, noun_surprisal, repeat_surprisal, verbatim_experiment
from workbench.errors import InputError
from workbench.stimuli.lists import random_token_lists


def test_noun_surprisal_matches_full_logits():
    s = tiny_llama(seed=6)
    lists = random_token_lists(s, n_items=5, batch=3, seed=1, order="permuted")
    first, second = noun_surprisal(s, lists, batch_size=2)
    logp = torch.log_softmax(s.logits(lists.input_ids).double(), -1)
    for pos, got in ((lists.study_pos, first), (lists.test_pos, second)):
        want = -logp[torch.arange(3)[:, None], pos - 1, lists.input_ids.gather(1, pos)] / math.log(2)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4)


def test_repeat_surprisal_and_median_ci():
    first = np.array([[4.0, 6.0], [2.0, 2.0], [10.0, 10.0]])
    second = np.array([[1.0, 1.0], [2.0, 4.0], [5.0, 5.0]])
    np.testing.assert_allclose(repeat_surprisal(first, second), [20.0, 150.0, 50.0])
    med, low, high = median_ci(np.arange(101.0), n_boot=500, seed=0)
    assert med == 50.0 and 35 < low < 50 < high < 65
    assert median_ci(np.arange(101.0), n_boot=500, seed=0) == (med, low, high)
    with pytest.raises(InputError, match="at least 2"):
        median_ci([1.0, np.nan])
    with pytest.raises(InputError, match="surprisal arrays"):
        repeat_surprisal(first[0], second[0])


@pytest.mark.model
def test_repeated_lists_are_cheaper_than_permuted_and_novel_on_smollm2(smollm2):
    res = verbatim_experiment(smollm2, list_lens=(5,), n_lists=8, seed=0, n_boot=500)
    med = res.summary.set_index("condition")["median"]
    # measured (seed 0, 20 lists of 5 nouns, short intervening text): repeated 10.5, permuted 37.0, novel 91.8
    assert med["repeated"] < 25 and med["permuted"] > med["repeated"] + 10
    assert med["novel"] > med["permuted"] + 25 and 75 < med["novel"] < 115
    assert len(res.prompts) == 24 and set(res.timecourse["list"]) == {1, 2}
