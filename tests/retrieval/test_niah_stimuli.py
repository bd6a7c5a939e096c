"""NIAH builder: exact lengths, exact needle/answer spans, answers absent from the haystack, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.errors import InputError
from workbench.stimuli.niah import (NOISE, Needle, haystack_ids, insertion_point, needle_pool, niah_grid,
                                    prompt_template)

pytestmark = pytest.mark.model  # uses smollm2's tokenizer (the model loads in ~0.5 s)


def _check_test(subject, t):
    ids = t.input_ids.tolist()
    assert len(ids) == t.length
    n0, n1 = t.needle_span
    a0, a1 = t.answer_span
    assert n0 <= a0 < a1 <= n1
    assert subject.tokenizer.decode(ids[n0:n1]).strip() == t.needle.text
    assert subject.tokenizer.decode(ids[a0:a1]).strip() == t.needle.answer
    answer = set(ids[a0:a1])
    assert not answer & set(ids[:a0] + ids[a1:]), "an answer token occurs outside the answer span"


@pytest.mark.parametrize("haystack", ["noise", "random", "file"])
def test_grid_spans_lengths_and_answer_absence(smollm2, shared_data, haystack):
    hay = shared_data / "pride_and_prejudice.txt" if haystack == "file" else haystack
    grid = niah_grid(smollm2, [200, 333], [0, 37.5, 100], n_needles=3, haystack=hay, seed=4)
    assert len(grid) == 2 * 3 * 3
    assert grid.settings["n_needles"] == 3 and grid.settings["lengths"] == [200, 333]
    for t in grid:
        _check_test(smollm2, t)
    # the prompt ends with the question of its own needle
    tail = smollm2.tokenizer.decode(grid.tests[0].input_ids[-40:].tolist())
    assert grid.tests[0].needle.question in tail
    # depth 0 puts the needle right after the template prefix, depth 100 right before the suffix
    by_depth = {t.depth: t for t in grid if t.length == 333 and t.needle_index == 0}
    template = prompt_template(smollm2, by_depth[0].needle.question)
    assert by_depth[0].needle_span[0] == len(template.prefix)
    assert by_depth[100].needle_span[1] == 333 - len(template.suffix)
    assert by_depth[0].actual_depth == 0 and by_depth[100].actual_depth == 100
    assert 0 < by_depth[37.5].actual_depth <= 37.5


def test_needle_moves_back_to_a_sentence_end(smollm2):
    grid = niah_grid(smollm2, [300], [50], n_needles=2, haystack="noise", seed=0)
    for t in grid:
        before = smollm2.tokenizer.decode(t.input_ids[t.needle_span[0] - 1:t.needle_span[0]].tolist())
        assert before.strip().endswith(".")
    ends = np.array([False, False, True, False, False, True, False])
    assert insertion_point(ends, 50) == 3  # int(7 * .5) = 3: token 2 ends a sentence
    assert insertion_point(ends, 90) == 6
    assert insertion_point(ends, 20) == 0  # no sentence end before position 1
    assert insertion_point(ends, 100) == 7


def test_seeded_and_haystacks_differ(smollm2, shared_data):
    a = niah_grid(smollm2, [256], [50], n_needles=2, haystack="random", seed=1)
    b = niah_grid(smollm2, [256], [50], n_needles=2, haystack="random", seed=1)
    c = niah_grid(smollm2, [256], [50], n_needles=2, haystack="random", seed=2)
    assert all((x.input_ids == y.input_ids).all() for x, y in zip(a, b))
    assert not all((x.input_ids == y.input_ids).all() for x, y in zip(a, c))
    noise = smollm2.tokenizer.decode(haystack_ids(smollm2, "noise", 60))
    assert noise.strip().startswith(NOISE[:40])
    book = smollm2.tokenizer.decode(haystack_ids(smollm2, shared_data / "pride_and_prejudice.txt", 80, seed=3))
    assert len(book) > 200 and "The grass is green" not in book
    # random text avoids the forbidden tokens it was asked to avoid
    forbidden = set(smollm2.tokenizer(" the", add_special_tokens=False)["input_ids"])
    assert not forbidden & set(haystack_ids(smollm2, "random", 400, seed=0, forbidden=forbidden))


def test_needles_with_answer_in_haystack_are_refused(smollm2):
    # 'green' is in RULER's noise haystack: a user's needle answering 'green' is refused, not silently dropped
    bad = Needle("The colour of the door is green.", "What is the colour of the door?", "green")
    good = Needle("The code of the vault is 8641.", "What is the code of the vault?", "8641")
    grid = niah_grid(smollm2, [128], [50], haystack="noise", needles=[good])
    assert grid.settings["needles"] == [good.text] and grid.settings["rejected_needles"] == []
    with pytest.raises(InputError, match="absent from the haystack"):
        niah_grid(smollm2, [128], [50], haystack="noise", needles=[bad, good])
    # the seeded pool: distinct needles whose answers are in their text
    pool = needle_pool(12, seed=0)
    assert len({n.question for n in pool}) == 12 and all(n.answer in n.text for n in pool)


@pytest.mark.parametrize("lengths, depths, match", [
    ([0], [50], "context lengths"), ([10**6], [50], "context lengths"), ([256], [-1], "depths"),
    ([256], [101], "depths"), ([], [50], "at least one"), (["abc"], [50], "integers"), ([20], [50], "no room"),
])
def test_bad_grid_gets_clear_error(smollm2, lengths, depths, match):
    with pytest.raises(InputError, match=match):
        niah_grid(smollm2, lengths, depths)


def test_bad_inputs(smollm2, tmp_path):
    with pytest.raises(InputError, match="neither 'noise', 'random' nor an existing"):
        niah_grid(smollm2, [256], [50], haystack=tmp_path / "missing.txt")
    with pytest.raises(InputError, match="non-empty part"):
        Needle("The code is 1.", "What is the code?", "2")
    with pytest.raises(InputError, match="kinds"):
        needle_pool(3, kinds=("colour",))
