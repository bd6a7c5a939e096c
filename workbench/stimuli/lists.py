"""Free-recall list stimuli: a study list, then a test list of the same (or new) items, with every position known.

Three designs from the episodic-memory papers (METHODS.md §3, §4, §10):

- :func:`random_token_lists` (Ji-An et al. 2024): BOS + random tokens presented twice in the same order.
- :func:`frequent_token_lists` (Mistry et al. 2025): BOS + common words presented once, then the same words in
  a random order. Frequency proxy: ``data/episodic/common_words.jsonl``, common English words in approximate
  order of frequency, kept only where ``" " + word`` is one token of the model's tokenizer (toy vocabularies
  without them fall back to the lowest token ids, i.e. BPE merge rank, as in ``token_pool``).
- :func:`verbatim_lists` (Armeni et al. 2022): "Before the meeting, Mary wrote down the following list of words:"
  nouns, intervening text, "When she got back, she read the list again:" and a repeated, permuted or novel list.
  Nouns and intervening texts: ``data/episodic/nouns.jsonl`` and ``intervening.jsonl`` (written for this project).

Every builder is deterministic given its seed and returns a :class:`RecallLists`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .random_tokens import random_token_ids, token_pool

DATA = Path(__file__).resolve().parents[2] / "data" / "episodic"
ARMENI_PREFIX = "Before the meeting, Mary wrote down the following list of words:"
ARMENI_RETURN = "When she got back, she read the list again:"
CONDITIONS = ("repeated", "permuted", "novel")


@dataclass
class RecallLists:
    """A batch of study/test lists: token ids plus the position of every study and test item.

    ``study_pos[b, s]``: position of study item ``s`` (serial position s); ``test_pos[b, t]``: position of the
    t-th test item; ``test_item[b, t]``: the study serial position of that item's token (-1 for a new item).
    """

    input_ids: torch.Tensor
    study_pos: torch.Tensor
    test_pos: torch.Tensor
    test_item: torch.Tensor
    kind: str
    seed: int
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        b = self.input_ids.shape[0]
        if self.study_pos.shape[0] != b or self.test_pos.shape != self.test_item.shape or self.test_pos.shape[0] != b:
            raise InputError("study_pos, test_pos and test_item need one row per sequence (and test_pos, test_item "
                             "the same shape)")
        if int(self.test_item.max()) >= self.n_items:
            raise InputError(f"test_item must index the {self.n_items} study items (or be -1)")

    @property
    def n_items(self) -> int:
        return int(self.study_pos.shape[1])

    @property
    def batch(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def first_pos(self) -> torch.Tensor:
        """(B, n_test) position of each test item's first occurrence (its study position), -1 for a new item."""
        pos = self.study_pos.gather(1, self.test_item.clamp(min=0))
        return torch.where(self.test_item >= 0, pos, torch.full_like(pos, -1))

    @property
    def study_ids(self) -> torch.Tensor:
        """(B, n_items) token id of each study item."""
        return self.input_ids.gather(1, self.study_pos)

    @property
    def contiguous(self) -> bool:
        """Whether the study items sit on consecutive positions (then item lags equal token lags)."""
        return bool((self.study_pos.diff(dim=1) == 1).all())

    def settings(self) -> dict:
        return {"kind": self.kind, "n_items": self.n_items, "n_test": int(self.test_pos.shape[1]),
                "batch": self.batch, "tokens": int(self.input_ids.shape[1]), "seed": self.seed, **self.info}


def _with_bos(subject, ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    if subject.bos_token_id is None:
        return ids, 0
    return torch.cat([torch.full((ids.shape[0], 1), subject.bos_token_id, dtype=torch.long), ids], dim=1), 1


def _two_presentations(subject, block: torch.Tensor, order: torch.Tensor, kind: str, seed: int, info: dict):
    """BOS + block + block reordered by ``order`` (B, n): the study list and its test list."""
    batch, n = block.shape
    ids, offset = _with_bos(subject, torch.cat([block, block.gather(1, order)], dim=1))
    subject.check_length(ids.shape[1])
    pos = torch.arange(n).expand(batch, n)
    return RecallLists(ids, (offset + pos).clone(), (offset + n + pos).clone(), order.clone(), kind, seed, info)


def _orders(batch: int, n: int, seed: int, permuted: bool) -> torch.Tensor:
    if not permuted:
        return torch.arange(n).expand(batch, n).clone()
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=gen) for _ in range(batch)])


def random_token_lists(subject, n_items: int = 50, batch: int = 20, seed: int = 0,
                       order: str = "same") -> RecallLists:
    """BOS + ``n_items`` distinct random tokens presented twice, the second time in the same (or a permuted) order (Ji-An et al. 2024)."""
    if n_items < 2 or batch < 1 or order not in ("same", "permuted"):
        raise InputError("random_token_lists needs n_items >= 2, batch >= 1 and order 'same' or 'permuted'")
    block = random_token_ids(subject, batch, n_items, seed)
    return _two_presentations(subject, block, _orders(batch, n_items, seed + 1, order == "permuted"),
                              "random_tokens_twice", seed, {"order": order, "pool": "token_pool (merge-rank proxy)"})


@lru_cache(maxsize=8)
def _jsonl(name: str) -> tuple[dict, ...]:
    path = DATA / name
    if not path.is_file():
        raise InputError(f"stimulus file {path} is missing: restore data/episodic/ from the repository")
    return tuple(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def single_token_words(subject, words) -> tuple[list[str], torch.Tensor]:
    """The words whose ``" " + word`` is exactly one token of the subject's tokenizer, and those token ids."""
    kept, ids = [], []
    for word in words:
        tok = subject.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if len(tok) == 1 and tok[0] not in ids:
            kept.append(word)
            ids.append(tok[0])
    return kept, torch.tensor(ids, dtype=torch.long)


def frequent_tokens(subject, n: int) -> tuple[torch.Tensor, str]:
    """Ids of ``n`` frequent tokens and the proxy used: the first single-token words of data/episodic/common_words.jsonl,
    or, for a tokenizer without enough of them (e.g. a toy vocabulary), the lowest-id tokens (BPE merge rank)."""
    _, ids = single_token_words(subject, [r["word"] for r in _jsonl("common_words.jsonl")])
    if n <= len(ids):
        return ids[:n], "common English words (data/episodic/common_words.jsonl)"
    pool = token_pool(subject, skip_frequent=0.0, skip_rare=0.0)
    if n > len(pool):
        raise InputError(f"{subject.name}'s vocabulary has only {len(pool)} usable tokens; ask for n <= {len(pool)}")
    return pool[:n], "lowest token ids (BPE merge rank)"


def frequent_token_lists(subject, n_items: int = 40, batch: int = 20, seed: int = 0,
                         study_order: str = "random") -> RecallLists:
    """BOS + the ``n_items`` most frequent words once, then the same words in a random order (Mistry et al. 2025); study order random per sequence (or 'frequency')."""
    if n_items < 2 or batch < 1 or study_order not in ("random", "frequency"):
        raise InputError("frequent_token_lists needs n_items >= 2, batch >= 1, study_order 'random' or 'frequency'")
    ids, proxy = frequent_tokens(subject, n_items)
    gen = torch.Generator().manual_seed(seed)
    if study_order == "random":
        block = torch.stack([ids[torch.randperm(n_items, generator=gen)] for _ in range(batch)])
    else:
        block = ids.expand(batch, n_items).clone()
    order = _orders(batch, n_items, seed + 1, True)
    return _two_presentations(subject, block, order, "frequent_tokens_then_permuted", seed,
                              {"study_order": study_order, "frequency_proxy": proxy})


def intervening_texts() -> dict[str, str]:
    """The named intervening texts of data/episodic/intervening.jsonl (short to longest)."""
    return {r["name"]: r["text"] for r in _jsonl("intervening.jsonl")}


def nouns(subject) -> list[str]:
    """The project's concrete nouns (data/episodic/nouns.jsonl) that are single tokens with a leading space."""
    return single_token_words(subject, [r["noun"] for r in _jsonl("nouns.jsonl")])[0]


def verbatim_lists(subject, list_len: int = 5, condition: str = "repeated", intervening: str = "short",
                   n_lists: int = 20, seed: int = 0, scramble: bool = False) -> RecallLists:
    """Armeni et al. (2022) prompts: preface, list 1 of nouns, intervening text, 'When she got back...', list 2 (repeated, permuted or novel).

    ``intervening`` is a name from :func:`intervening_texts` or the text itself; ``scramble`` shuffles its words
    (seeded) as a control for its coherence. Nouns occurring in the intervening text are never drawn.
    Study items are list 1's nouns, test items list 2's (``test_item`` -1 in the novel condition).
    """
    if condition not in CONDITIONS:
        raise InputError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    if list_len < 2 or n_lists < 1:
        raise InputError("verbatim_lists needs list_len >= 2 and n_lists >= 1")
    texts = intervening_texts()
    text = texts.get(intervening, intervening)
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"intervening must be one of {', '.join(texts)} or a non-empty text")
    if scramble:
        words = text.split()
        order = torch.randperm(len(words), generator=torch.Generator().manual_seed(_seed(seed, -1)))
        text = " ".join(words[i] for i in order.tolist())
    present = set(re.findall(r"[a-z]+", text.lower()))
    pool, pool_ids = single_token_words(subject, [n for n in nouns(subject)
                                                  if n not in present and n + "s" not in present])
    need = list_len * (2 if condition == "novel" else 1)
    if need > len(pool):
        raise InputError(f"{condition} lists of {list_len} need {need} nouns, only {len(pool)} are available")

    def enc(t: str) -> list[int]:
        return subject.tokenizer(t, add_special_tokens=False)["input_ids"]

    comma, period = enc(","), enc(".")
    head = ([subject.bos_token_id] if subject.bos_token_id is not None else []) + enc(ARMENI_PREFIX)
    middle = enc(" " + text.strip()) + enc(" " + ARMENI_RETURN)
    rows, study, test, items = [], [], [], []
    for i in range(n_lists):
        gen = torch.Generator().manual_seed(_seed(seed, i))  # per list: list 1 is the same in every condition
        draw = torch.randperm(len(pool), generator=gen)[:need]
        first = pool_ids[draw[:list_len]]
        if condition == "repeated":
            order = torch.arange(list_len)
        elif condition == "permuted":
            order = _derangement(list_len, gen)
        else:
            order = torch.full((list_len,), -1)
        second = pool_ids[draw[list_len:]] if condition == "novel" else first[order]
        ids, s_pos, t_pos = list(head), [], []
        for noun_ids, where, tail in ((first, s_pos, middle), (second, t_pos, [])):
            for k, tok in enumerate(noun_ids.tolist()):
                where.append(len(ids))
                ids += [tok] + (comma if k < list_len - 1 else period)
            ids += tail
        rows.append(ids)
        study.append(s_pos)
        test.append(t_pos)
        items.append(order)
    ids = torch.tensor(rows, dtype=torch.long)
    subject.check_length(ids.shape[1])
    info = {"list_len": list_len, "condition": condition, "intervening": intervening if intervening in texts
            else "custom", "intervening_tokens": len(enc(" " + text.strip())), "scramble": scramble}
    return RecallLists(ids, torch.tensor(study), torch.tensor(test), torch.stack(items), "verbatim_lists", seed, info)


def _seed(seed: int, index: int) -> int:
    """A torch seed for item ``index`` of a run seeded ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([seed, index + 1]).generate_state(1)[0])


def _derangement(n: int, gen: torch.Generator) -> torch.Tensor:
    """A random permutation of 0..n-1 with no fixed point (a permuted list never keeps an item in place)."""
    while True:
        order = torch.randperm(n, generator=gen)
        if not bool((order == torch.arange(n)).any()):
            return order
