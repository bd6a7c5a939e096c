"""Needle-in-a-haystack stimuli (Wu et al. 2024's retrieval-head set-up; RULER's noise haystack).

A test is one prompt of exactly ``length`` tokens: ``[template prefix] haystack[:i] needle haystack[i:]
[template suffix: the question]``. The needle is a sentence whose *answer* occurs nowhere else in the prompt,
so a generated answer token can only come from the needle. Needles come in families (``FAMILIES``): a
7-digit number, a four-word password, a letter-digit code and a person's name; the default grid mixes
them in equal numbers, and its seeded needles have answers of at least ``MIN_ANSWER_TOKENS`` tokens, so
that one copied token is not half a head's score (Wu et al.'s score is copied tokens / answer tokens).
The old two-word password (``word_pair``) stays available for comparison. The
insertion point ``i`` is ``depth`` % into the haystack, moved back to the previous sentence end as in
Wu et al.'s code (depth 100: the very end). Prompts are assembled from token ids (never decoded and
re-encoded), so the recorded needle and answer spans are exact.

Haystacks: ``"noise"`` (RULER's repeated sentences), ``"random"`` (seeded sentences of random
vocabulary words and numbers, avoiding the answers' tokens), or a path to any UTF-8 text file (its
paragraphs, from a seeded starting paragraph, repeated if the file is short).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from .text import paragraphs

# RULER's noise haystack (Hsieh et al. 2024, "RULER", niah task with haystack "noise")
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "Based on the content of the book, Question: {question}\nAnswer:"  # Wu et al. 2024's prompt
FAMILIES = ("number", "password", "code", "name")  # the default mix of needle families
KINDS = FAMILIES + ("word_pair",)  # every family needle_pool can draw
MIN_ANSWER_TOKENS = 4  # seeded needles with shorter answers are not used (one token would be >= 1/3 of a score)
_SENTINEL = "\u0000CONTEXT\u0000"
_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*\s*$")

# fillers for the needle templates: answers are rare words or digit strings, keys are places
_CITIES = ("Lisbon", "Oslo", "Kyoto", "Nairobi", "Quito", "Tbilisi", "Hanoi", "Reykjavik", "Valparaiso",
           "Marrakesh", "Tallinn", "Cusco", "Dakar", "Hobart", "Bergen", "Tromso")
_PLACES = ("north tower", "old library", "river cabin", "glass house", "east harbour", "stone bridge",
           "winter garden", "clock room", "salt mine", "hidden cellar", "blue door", "lower deck",
           "copper mill", "west gate", "signal tower", "boat shed", "map room", "orchard gate", "iron foundry",
           "south pier", "chapel crypt", "coal yard", "upper gallery", "weather station")
_ADJECTIVES = ("lavender", "crimson", "velvet", "cobalt", "emerald", "violet", "turquoise", "saffron",
               "indigo", "maroon", "tangerine", "magenta")
_NOUNS = ("submarine", "lighthouse", "telescope", "harpoon", "pelican", "lantern", "glacier", "trombone",
          "cactus", "walrus", "zeppelin", "hammock", "volcano", "penguin", "pineapple", "tornado")
_CODE_LETTERS = "QVXZKJW"  # rare as lone tokens in English text; no separators ('-' is common in novels)
_FIRST_NAMES = ("Zephyrine", "Ottoline", "Leopoldine", "Isidora", "Thaddeus", "Evander", "Cosimo", "Ignatius",
                "Philomena", "Wilhelmina", "Barnaby", "Octavia", "Florian", "Rosalind", "Casimir", "Augustina")
_SURNAMES = ("Ballantrae", "Okonkwo", "Vasquez", "Lindqvist", "Abernathy", "Quartermaine", "Nakamura",
             "Featherstone", "Rasmussen", "Winterbourne", "Castellanos", "Przybylski", "Thistlewood", "Oyelaran")


@dataclass(frozen=True)
class Needle:
    """A sentence to hide, the question that asks for it, and its answer (a substring of ``text``)."""

    text: str
    question: str
    answer: str
    kind: str = "custom"

    def __post_init__(self):
        if not self.answer or self.answer not in self.text:
            raise InputError(f"the needle's answer {self.answer!r} must be a non-empty part of its text {self.text!r}")
        if not self.question.strip():
            raise InputError("a needle needs a question that asks for its answer")


def _pick(rng, options):
    return options[rng.integers(len(options))]


def _draw(kind: str, rng) -> tuple[Needle, tuple]:
    """One seeded needle of family ``kind`` and its key (needles with equal keys share a question)."""
    if kind == "number":  # a 7-digit number with distinct digits (Wu et al.'s / RULER's magic number)
        city = _pick(rng, _CITIES)
        digits = rng.permutation(10)[:7]
        if digits[0] == 0:
            digits = digits[::-1]
        value = "".join(map(str, digits))
        return (Needle(f"The special magic number for {city} is {value}.",
                       f"What is the special magic number for {city}?", value, kind), (kind, city))
    place = _pick(rng, _PLACES)
    if kind in ("password", "word_pair"):  # four (or, word_pair, two) rare words
        words = [_pick(rng, _ADJECTIVES if i % 2 == 0 else _NOUNS) for i in range(4 if kind == "password" else 2)]
        value = " ".join(words)
        return (Needle(f"The secret password for the {place} is {value}.",
                       f"What is the secret password for the {place}?", value, kind), (kind, place))
    if kind == "code":  # letters, digits, letters, e.g. QX4417ZV
        letters = "".join(_pick(rng, _CODE_LETTERS) for _ in range(4))
        value = f"{letters[:2]}{rng.integers(1000, 10000)}{letters[2:]}"
        return (Needle(f"The access code for the {place} is {value}.",
                       f"What is the access code for the {place}?", value, kind), (kind, place))
    value = f"{_pick(rng, _FIRST_NAMES)} {_pick(rng, _SURNAMES)}"  # name
    return (Needle(f"The keeper of the {place} is called {value}.",
                   f"What is the name of the keeper of the {place}?", value, kind), (kind, place))


def needle_pool(n: int, seed: int = 0, kinds: Sequence[str] = FAMILIES) -> list[Needle]:
    """``n`` distinct seeded needles cycling through ``kinds`` (``KINDS``: number, password, code, name, word_pair); distinct questions."""
    if n < 1:
        raise InputError(f"ask for at least one needle, got n={n}")
    kinds = list(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise InputError(f"needle kinds must be among {KINDS}, got {kinds}")
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    for attempt in range(50 * n):
        needle, key = _draw(kinds[len(out) % len(kinds)], rng)
        if key not in seen:  # distinct questions and answers within the pool
            seen.add(key)
            out.append(needle)
            if len(out) == n:
                return out
    raise InputError(f"cannot draw {n} distinct needles of kinds {kinds}: ask for fewer")


@dataclass
class NeedleTest:
    """One NIAH prompt. Spans are [start, end) token positions in ``input_ids``."""

    input_ids: torch.Tensor  # (length,) int64
    length: int
    depth: float  # requested depth, percent of the haystack
    actual_depth: float  # where the needle landed after moving back to a sentence end, percent
    needle: Needle
    needle_index: int
    needle_span: tuple[int, int]
    answer_span: tuple[int, int]
    haystack: str

    @property
    def answer_ids(self) -> torch.Tensor:
        return self.input_ids[self.answer_span[0]:self.answer_span[1]]

    @property
    def answer_positions(self) -> list[int]:
        return list(range(*self.answer_span))

    def record(self) -> dict:
        """JSON-ready description (no token ids)."""
        return {"length": self.length, "depth": self.depth, "actual_depth": round(self.actual_depth, 2),
                "needle_index": self.needle_index, "needle": self.needle.text, "question": self.needle.question,
                "answer": self.needle.answer, "kind": self.needle.kind, "needle_span": list(self.needle_span),
                "answer_span": list(self.answer_span), "haystack": self.haystack}


@dataclass
class NiahGrid:
    """NIAH tests over lengths x depths x needles, and the settings that rebuild them."""

    tests: list[NeedleTest]
    settings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tests)

    def __iter__(self):
        return iter(self.tests)


# ------------------------------------------------------------------------------------ template
@dataclass(frozen=True)
class PromptTemplate:
    """Token ids around the context: prefix + context + suffix (the question); built once per question."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    chat: bool


def prompt_template(subject, question: str, chat: bool | None = None, question_template: str = QUESTION) -> PromptTemplate:
    """Prefix/suffix ids around the haystack: the chat template (instruct models) with '<book>…</book>' as in Wu et al., else plain text."""
    tok = subject.tokenizer
    has_template = bool(getattr(tok, "chat_template", None))
    chat = has_template if chat is None else chat
    if chat and not has_template:
        raise InputError(f"{subject.name}'s tokenizer has no chat template: pass chat=False (plain prompt)")
    asked = question_template.format(question=question)
    if chat:
        content = f"<book>{_SENTINEL}</book>\n{asked}"
        text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    else:
        text = f"{_SENTINEL}\n{asked}"
    before, after = text.split(_SENTINEL)
    prefix = tok(before, add_special_tokens=False)["input_ids"] if before else []
    suffix = tok(after, add_special_tokens=False)["input_ids"]
    bos = subject.bos_token_id
    if subject.adds_bos and bos is not None and (not prefix or prefix[0] != bos):
        prefix = [bos] + prefix
    return PromptTemplate(tuple(prefix), tuple(suffix), chat)


# ----------------------------------------------------------------------------------- haystacks
def _tokens(subject, text: str) -> list[int]:
    return subject.tokenizer(text, add_special_tokens=False)["input_ids"]


@lru_cache(maxsize=4)
def _file_stream(tokenizer, path: str, mtime: float) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of the file's paragraphs (each with a leading space) and the index where each paragraph starts."""
    ids, starts = [], []
    for para in paragraphs(path, min_chars=100):
        starts.append(len(ids))
        ids.extend(tokenizer(" " + para, add_special_tokens=False)["input_ids"])
    return np.asarray(ids, dtype=np.int64), np.asarray(starts, dtype=np.int64)


@lru_cache(maxsize=4)
def _vocabulary_words(tokenizer) -> tuple[tuple[str, int], ...]:
    """Lowercase whole-word tokens of the vocabulary (' word', 3-10 letters) with their ids: the random haystack's words."""
    words = []
    for token, index in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token])
        if re.fullmatch(r" [a-z]{3,10}", text):
            words.append((text[1:], index))
    if len(words) < 50:
        raise InputError("the tokenizer has too few whole-word tokens for the 'random' haystack: use 'noise' or a text file")
    return tuple(sorted(words))


def _random_text_ids(subject, n_tokens: int, seed: int, forbidden: set[int]) -> list[int]:
    """Seeded sentences of 6-14 random vocabulary words (15% numbers), without any token in ``forbidden``."""
    rng = np.random.default_rng(seed)
    words = [w for w, index in _vocabulary_words(subject.tokenizer) if index not in forbidden]
    digits = [d for d in "0123456789" if not forbidden & set(_tokens(subject, d))]
    ids: list[int] = []
    while len(ids) < n_tokens:
        sentence = []
        for _ in range(int(rng.integers(6, 15))):
            if digits and rng.random() < 0.15:
                sentence.append("".join(rng.choice(digits, size=int(rng.integers(1, 5)))))
            else:
                sentence.append(words[rng.integers(len(words))])
        sentence[0] = sentence[0].capitalize()
        ids.extend(_tokens(subject, " " + " ".join(sentence) + "."))
    return ids[:n_tokens]


def haystack_ids(subject, haystack: str | Path, n_tokens: int, seed: int = 0, forbidden: set[int] | None = None) -> list[int]:
    """``n_tokens`` haystack token ids: 'noise' (RULER), 'random' (seeded random words/numbers) or a text file's paragraphs from a seeded paragraph on."""
    if n_tokens < 1:
        raise InputError(f"a haystack needs at least one token, got {n_tokens}")
    if haystack == "noise":
        block = _tokens(subject, " " + NOISE)
        return (block * (n_tokens // len(block) + 1))[:n_tokens]
    if haystack == "random":
        return _random_text_ids(subject, n_tokens, seed, forbidden or set())
    path = Path(haystack).expanduser()
    if not path.is_file():
        raise InputError(f"haystack {str(haystack)!r} is neither 'noise', 'random' nor an existing text file")
    ids, starts = _file_stream(subject.tokenizer, str(path.resolve()), path.stat().st_mtime)
    start = int(starts[np.random.default_rng(seed).integers(len(starts))])
    reps = (start + n_tokens) // len(ids) + 1
    return np.tile(ids, reps)[start:start + n_tokens].tolist()


def _haystack_name(haystack) -> str:
    return haystack if haystack in ("noise", "random") else str(Path(haystack).expanduser())


# ------------------------------------------------------------------------------------- needles
def _needle_ids(subject, needle: Needle) -> tuple[list[int], tuple[int, int]]:
    """Ids of ' ' + needle text, and the [start, end) span of the tokens that overlap the answer's characters."""
    text = " " + needle.text
    enc = subject.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    a0 = text.rindex(needle.answer)
    a1 = a0 + len(needle.answer)
    inside = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > a0 and s < a1]
    if not inside:
        raise InputError(f"the tokenizer maps no token to the answer {needle.answer!r} of needle {needle.text!r}")
    return list(enc["input_ids"]), (inside[0], inside[-1] + 1)


def _sentence_ends(subject, ids: Sequence[int]) -> np.ndarray:
    """Bool per token: the token ends a sentence ('.', '!', '?', optionally followed by a quote or bracket)."""
    tok = subject.tokenizer
    cache: dict[int, bool] = {}
    out = np.zeros(len(ids), dtype=bool)
    for i, t in enumerate(ids):
        if t not in cache:
            cache[t] = bool(_SENTENCE_END.search(tok.decode([t])))
        out[i] = cache[t]
    return out


def insertion_point(ends: np.ndarray, depth: float) -> int:
    """Wu et al.'s placement: int(n * depth/100), moved back until the token before it ends a sentence (0 if none); depth 100 = the end."""
    n = len(ends)
    if depth >= 100:
        return n
    point = int(n * depth / 100)
    while point > 0 and not ends[point - 1]:
        point -= 1
    return point


def _check_grid(subject, lengths, depths) -> tuple[list[int], list[float]]:
    try:
        lengths = sorted({int(x) for x in lengths})
        depths = sorted({float(d) for d in depths})
    except (TypeError, ValueError):
        raise InputError("lengths must be integers (tokens) and depths numbers (percent), e.g. "
                         "lengths=[256, 512], depths=[0, 50, 100]") from None
    if not lengths or not depths:
        raise InputError("give at least one context length and one needle depth")
    if lengths[0] < 1 or lengths[-1] > subject.context_limit:
        raise InputError(f"context lengths must lie in 1..{subject.context_limit} ({subject.name}'s limit), got {lengths}")
    if depths[0] < 0 or depths[-1] > 100:
        raise InputError(f"needle depths are percentages in [0, 100], got {depths}")
    return lengths, depths


def _quotas(n: int, kinds: Sequence[str]) -> dict[str, int]:
    """Needles per family: ``n`` split as evenly as possible, earlier families first."""
    return {k: n // len(kinds) + (i < n % len(kinds)) for i, k in enumerate(kinds)}


def niah_grid(subject, lengths: Sequence[int], depths: Sequence[float], n_needles: int = 4,
              haystack: str | Path = "noise", seed: int = 0, needles: Sequence[Needle] | None = None,
              chat: bool | None = None, question_template: str = QUESTION, kinds: Sequence[str] = FAMILIES,
              min_answer_tokens: int = MIN_ANSWER_TOKENS) -> NiahGrid:
    """NIAH prompts of exactly each length (tokens) x depth (%) x needle; seeded needles balanced over ``kinds``, with answers of >= ``min_answer_tokens`` tokens absent from the rest of the prompt."""
    lengths, depths = _check_grid(subject, lengths, depths)
    given = needles is not None
    if not given:
        kinds = list(dict.fromkeys(kinds or ()))
        if n_needles < 1:
            raise InputError(f"ask for at least one needle, got n_needles={n_needles}")
        pool = min(max(4 * n_needles, n_needles + 8), len(kinds) * len(_PLACES))
        if pool < n_needles:
            raise InputError(f"at most {pool} distinct needles of kinds {kinds}: ask for fewer or add kinds")
    candidates = list(needles) if given else needle_pool(pool, seed, kinds)
    if given and not candidates:
        raise InputError("needles is empty: pass Needle objects or leave it None for the seeded pool")
    want = len(candidates) if given else n_needles
    quota = None if given else _quotas(n_needles, kinds)
    hay_name = _haystack_name(haystack)
    tests, used, rejected, short, chat_used = [], [], [], [], chat
    for needle in candidates:
        if len(used) == want:
            break
        if quota is not None and quota.get(needle.kind, 0) <= sum(u.kind == needle.kind for u in used):
            continue
        template = prompt_template(subject, needle.question, chat, question_template)
        chat_used = template.chat
        n_ids, a_span = _needle_ids(subject, needle)
        if not given and a_span[1] - a_span[0] < min_answer_tokens:
            short.append(needle.text)
            continue
        answer = set(n_ids[a_span[0]:a_span[1]])
        fixed = len(template.prefix) + len(n_ids) + len(template.suffix)
        if lengths[0] <= fixed:
            raise InputError(f"context length {lengths[0]} leaves no room for a haystack: the template, question "
                             f"and needle take {fixed} tokens; use lengths > {fixed}")
        hay_seed = zlib.crc32(f"{seed}:{needle.text}".encode())
        full = haystack_ids(subject, haystack, lengths[-1] - fixed, hay_seed, forbidden=answer)
        outside = set(template.prefix) | set(template.suffix) | set(n_ids[:a_span[0]]) | set(n_ids[a_span[1]:])
        if answer & (set(full) | outside):
            rejected.append(needle.text)
            continue
        index = len(used)
        used.append(needle)
        for length in lengths:
            hay = full[:length - fixed]
            ends = _sentence_ends(subject, hay)
            for depth in depths:
                point = insertion_point(ends, depth)
                ids = list(template.prefix) + hay[:point] + n_ids + hay[point:] + list(template.suffix)
                start = len(template.prefix) + point
                tests.append(NeedleTest(
                    input_ids=torch.tensor(ids, dtype=torch.long), length=length, depth=depth,
                    actual_depth=100.0 * point / max(1, len(hay)), needle=needle, needle_index=index,
                    needle_span=(start, start + len(n_ids)),
                    answer_span=(start + a_span[0], start + a_span[1]), haystack=hay_name))
    if len(used) < want:
        why = f"; {len(short)} had answers shorter than {min_answer_tokens} tokens (lower min_answer_tokens)" if short else ""
        raise InputError(f"only {len(used)} of {want} needles have answers whose tokens are absent from the "
                         f"haystack {hay_name!r} (rejected: {rejected[:3]}){why}: use another haystack, other "
                         "needle kinds, fewer needles or your own needles")
    settings = {"kind": "niah", "lengths": lengths, "depths": depths, "n_needles": len(used), "haystack": hay_name,
                "seed": seed, "chat": chat_used,
                "question_template": question_template, "needles": [n.text for n in used],
                "families": [n.kind for n in used], "rejected_needles": rejected}
    if not given:
        settings.update(kinds=kinds, min_answer_tokens=min_answer_tokens, short_answers=short)
    return NiahGrid(tests, settings)
