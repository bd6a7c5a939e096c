"""List stimuli: positions, seeds and the three designs (Ji-An, Mistry, Armeni) on the real tokenizer."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_llama
from workbench.errors import InputError
from workbench.stimuli.lists import (ARMENI_PREFIX, ARMENI_RETURN, frequent_token_lists, intervening_texts,
                                     random_token_lists, verbatim_lists)


def test_random_lists_positions_and_seeds():
    s = tiny_llama()
    a = random_token_lists(s, n_items=7, batch=3, seed=4)
    assert a.input_ids.shape == (3, 15) and (a.input_ids[:, 0] == s.bos_token_id).all()
    assert a.contiguous and a.study_pos[0].tolist() == list(range(1, 8)) and a.test_pos[0].tolist() == list(range(8, 15))
    assert torch.equal(a.input_ids.gather(1, a.test_pos), a.input_ids.gather(1, a.first_pos))
    assert torch.equal(a.test_item[0], torch.arange(7))
    assert torch.equal(a.input_ids, random_token_lists(s, n_items=7, batch=3, seed=4).input_ids)
    p = random_token_lists(s, n_items=7, batch=3, seed=4, order="permuted")
    assert torch.equal(p.study_ids, a.study_ids) and not torch.equal(p.test_item, a.test_item)
    assert torch.equal(p.input_ids.gather(1, p.test_pos), p.input_ids.gather(1, p.first_pos))
    with pytest.raises(InputError, match="n_items >= 2"):
        random_token_lists(s, n_items=1)


@pytest.mark.model
def test_frequent_lists_use_common_words(smollm2):
    lists = frequent_token_lists(smollm2, n_items=10, batch=4, seed=0)
    assert lists.info["frequency_proxy"].startswith("common English words")
    words = {w.strip() for w in smollm2.to_str_tokens(lists.study_ids[0])}
    assert {"the", "of", "and", "to"} <= words
    assert all(sorted(r.tolist()) == sorted(lists.study_ids[0].tolist()) for r in lists.study_ids)
    assert not torch.equal(lists.test_item[0], torch.arange(10))


@pytest.mark.model
def test_verbatim_lists_follow_armeni(smollm2):
    first = {c: verbatim_lists(smollm2, 5, c, "short", n_lists=6, seed=1) for c in ("repeated", "permuted", "novel")}
    text = smollm2.tokenizer.decode(first["repeated"].input_ids[0][1:])
    assert text.startswith(ARMENI_PREFIX) and ARMENI_RETURN in text and intervening_texts()["short"] in text
    nouns1 = text.split(":")[1].split(".")[0].split(",")
    assert len(nouns1) == 5 and text.rstrip().endswith(".")
    study = {c: l.study_ids for c, l in first.items()}
    assert torch.equal(study["repeated"], study["permuted"]) and torch.equal(study["repeated"], study["novel"])
    rep, per, nov = (first[c] for c in ("repeated", "permuted", "novel"))
    assert torch.equal(rep.input_ids.gather(1, rep.test_pos), rep.study_ids)
    assert (per.test_item != torch.arange(5)).all()  # a derangement: no noun keeps its place
    assert torch.equal(per.input_ids.gather(1, per.test_pos), per.input_ids.gather(1, per.first_pos))
    second = nov.input_ids.gather(1, nov.test_pos)
    assert (nov.test_item == -1).all() and not (second[..., None] == nov.study_ids[:, None, :]).any()
    long = verbatim_lists(smollm2, 3, "repeated", "longest", n_lists=2, seed=0)
    assert long.info["intervening_tokens"] > 400
    words = set(intervening_texts()["longest"].lower().replace(".", " ").replace(",", " ").split())
    assert not {w.strip().lower() for w in smollm2.to_str_tokens(long.study_ids.flatten())} & words
    scrambled = verbatim_lists(smollm2, 3, "repeated", "medium", n_lists=2, seed=0, scramble=True)
    plain = verbatim_lists(smollm2, 3, "repeated", "medium", n_lists=2, seed=0)
    assert scrambled.input_ids.shape == plain.input_ids.shape and not torch.equal(scrambled.input_ids, plain.input_ids)
    with pytest.raises(InputError, match="condition"):
        verbatim_lists(smollm2, 3, "reversed")
    with pytest.raises(InputError, match="need 400 nouns"):
        verbatim_lists(smollm2, 200, "novel")
