"""Planted-mechanism data (METHODS s13): small worlds where one attention mechanism is necessary and identifiable.

Three seeded worlds over the toy vocabulary (content token ``c`` has id ``c + 4``; see ``workbench.toy.tokenizer``).
Each fixes its facts from ``world_seed`` (the same in every batch, so the model can memorise them) and splits its
items into ``train`` and held-out ``test`` items:

- ``temporal_facts`` (Park et al. 2025's contrast): ``BOS <body> E WAS -> attribute``; the body holds ``IN year``
  and a decoy ``BORN year`` at random slots among filler tokens. A *time-conditioned* entity's attribute depends on
  the era of the IN year (``years_per_era`` consecutive years per era, a different attribute per era); a
  *time-invariant* entity's does not. Held out: one year per (entity, era), so a held-out item needs the year ->
  era map learned from other entities. The decoy makes the year a two-step lookup (find the year that follows IN),
  so it cannot be read by the same layer-0 heads that fetch the entity. The mechanism: attention from ``WAS`` to
  the IN year (needed only by time-conditioned items).
- ``conflict_facts`` (PH3, Jin et al. 2024; JUICE, Li et al. 2025): ``BOS e1 a1 ... en an CUE E -> attribute``;
  every entity has a memorised attribute; the context pairs entities with different attributes and the cue
  (``MEM`` or ``CTX``) says which to give. Closed-book queries (about an entity the context does not mention, cue
  ``MEM``) teach the facts. Training rows ask several queries after one context. Held out: a quarter of each
  entity's conflicting attributes, which no training context states.
  The mechanism: attention from ``E`` to the context's attribute of E (needed only under ``CTX``).
- ``kv_retrieval`` (needle in a haystack in miniature, Wu et al. 2024): ``BOS k1 v1 ... kn vn Q k -> v EOS``;
  per row random keys and multi-token values; ``closed`` items query one of a few memorised keys that are not in
  the store (their values live in the weights). Training rows ask several queries after one store. Held out:
  fresh stores (held-out items come from a seeded stream the training batches never use).
  The mechanism: attention from each answer position to the store token it copies.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np
import torch

from ...errors import InputError
from ..batch import ToyBatch
from ..tokenizer import BOS_ID, EOS_ID, N_SPECIAL

SPLITS = ("train", "test")


@dataclass
class PlantedItems:
    """Prompts with their answers (teacher-forced: ``input_ids`` = prompt + answer, every row the same length).

    ``group[b]`` names the item's kind (e.g. "temporal" / "invariant"); ``source_pos[b, a]`` is the position of the
    token the planted mechanism reads for answer token ``a`` (-1 where none); ``foil[b]`` the competing answer's
    first token (conflict items) or -1; ``meta[b]`` what was drawn (entity, year, cue, ...).
    """

    kind: str
    input_ids: torch.Tensor
    prompt_len: int
    group: np.ndarray
    source_pos: torch.Tensor
    foil: torch.Tensor
    meta: list = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def answer_len(self) -> int:
        return int(self.input_ids.shape[1]) - self.prompt_len

    @property
    def answers(self) -> torch.Tensor:
        """(B, A) the answer tokens."""
        return self.input_ids[:, self.prompt_len:]

    @property
    def answer_positions(self) -> torch.Tensor:
        """(A,) the query positions whose next-token prediction is each answer token."""
        return torch.arange(self.prompt_len - 1, self.input_ids.shape[1] - 1)

    def select(self, idx) -> "PlantedItems":
        """The items ``idx`` (indices or a bool mask)."""
        idx = np.flatnonzero(np.asarray(idx)) if np.asarray(idx).dtype == bool else np.asarray(idx, dtype=np.int64)
        t = torch.as_tensor(idx, dtype=torch.long)
        return dataclasses.replace(self, input_ids=self.input_ids[t], group=self.group[idx],
                                   source_pos=self.source_pos[t], foil=self.foil[t],
                                   meta=[self.meta[i] for i in idx.tolist()])

    def of(self, *groups: str) -> "PlantedItems":
        """The items of the given groups."""
        return self.select(np.isin(self.group, groups))

    def to_batch(self) -> ToyBatch:
        """A training batch: loss on the answer tokens only, one segment per group."""
        target = torch.zeros_like(self.input_ids, dtype=torch.bool)
        target[:, self.prompt_len:] = True
        segments = {str(g): target & torch.as_tensor(self.group == g)[:, None] for g in np.unique(self.group)}
        return ToyBatch(self.input_ids, target, segments, {"kind": self.kind, "items": self})


def _rng(gen: torch.Generator) -> np.random.Generator:
    return np.random.default_rng(int(torch.randint(2**62, (1,), generator=gen)))


def _split(split: str) -> str:
    if split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def _check_vocab(vocab_size: int, needed: int, kind: str) -> None:
    if vocab_size - N_SPECIAL < needed:
        raise InputError(f"{kind} needs {needed} content tokens, but vocab_size {vocab_size} has "
                         f"{vocab_size - N_SPECIAL}: raise the model's vocab_size to {needed + N_SPECIAL} or more")


def _ids(content) -> torch.Tensor:
    return torch.as_tensor(np.asarray(content, dtype=np.int64) + N_SPECIAL)


# --------------------------------------------------------------------------------------------- temporal facts
@dataclass(frozen=True)
class TemporalWorld:
    """Time-conditioned and time-invariant entities (``n_entities`` each), years grouped into eras."""

    n_entities: int = 24
    n_eras: int = 4
    years_per_era: int = 4
    n_attributes: int = 16
    n_filler: int = 16
    body: int = 16  # slots before the entity: "IN year", "BORN year" and filler
    p_temporal: float = 0.5
    world_seed: int = 0

    kind = "temporal_facts"
    GROUPS = ("temporal", "invariant")

    def __post_init__(self):
        if self.n_entities < 1 or self.n_eras < 2 or self.years_per_era < 2 or self.body < 4 or self.n_filler < 1:
            raise InputError("temporal_facts needs n_entities >= 1, n_eras >= 2, years_per_era >= 2 (one is held "
                             "out per era), body >= 4 (two marker-year pairs) and n_filler >= 1")
        if self.n_attributes < self.n_eras or not 0 <= self.p_temporal <= 1:
            raise InputError("temporal_facts needs n_attributes >= n_eras (a different attribute per era) and "
                             "0 <= p_temporal <= 1")

    # content-token layout: WAS, IN, BORN, filler, years, time-conditioned entities, time-invariant entities,
    # attributes
    @property
    def n_years(self) -> int:
        return self.n_eras * self.years_per_era

    @property
    def n_content(self) -> int:
        return 3 + self.n_filler + self.n_years + 2 * self.n_entities + self.n_attributes

    def token(self, what: str, index=0):
        """Content index of 'was', 'in', 'born', 'filler', 'year', 'temporal', 'invariant' or 'attribute' ``index``."""
        starts = {"was": 0, "in": 1, "born": 2, "filler": 3, "year": 3 + self.n_filler}
        starts["temporal"] = starts["year"] + self.n_years
        starts["invariant"] = starts["temporal"] + self.n_entities
        starts["attribute"] = starts["invariant"] + self.n_entities
        return starts[what] + np.asarray(index)

    @cached_property
    def tables(self) -> dict:
        """The facts: ``temporal`` (n_entities, n_eras) and ``invariant`` (n_entities,) attribute numbers, and the
        held-out year (within its era) per (entity, era) for each kind."""
        rng = np.random.default_rng(self.world_seed)
        temporal = np.stack([rng.choice(self.n_attributes, self.n_eras, replace=False) for _ in range(self.n_entities)])
        invariant = rng.integers(self.n_attributes, size=self.n_entities)
        held = {g: rng.integers(self.years_per_era, size=(self.n_entities, self.n_eras)) for g in self.GROUPS}
        return {"temporal": temporal, "invariant": invariant, "held": held}

    def items(self, groups, entities, eras, years, rng: np.random.Generator) -> PlantedItems:
        """Items for the given (group, entity, era, year-within-era): the body holds ``IN year`` and a decoy
        ``BORN year`` (any year) at seeded non-overlapping slots among seeded filler."""
        t = self.tables
        n = len(groups)
        groups = np.asarray(groups)
        entities, eras, years = (np.asarray(a, dtype=np.int64) for a in (entities, eras, years))
        ent_tok = np.where(groups == "temporal", self.token("temporal", entities), self.token("invariant", entities))
        answer = np.where(groups == "temporal", t["temporal"][entities, eras], t["invariant"][entities])
        body = self.token("filler", rng.integers(self.n_filler, size=(n, self.body)))
        year_at = rng.integers(self.body - 1, size=n)  # the IN marker's slot; its year follows
        decoy_at = (year_at + 2 + rng.integers(self.body - 3, size=n)) % (self.body - 1)  # >= 2 slots away (cyclic)
        clash = np.abs(decoy_at - year_at) < 2
        decoy_at = np.where(clash, (year_at + 2) % (self.body - 1), decoy_at)
        clash = np.abs(decoy_at - year_at) < 2
        decoy_at = np.where(clash, (year_at - 2) % (self.body - 1), decoy_at)
        rows = np.arange(n)
        body[rows, year_at] = self.token("in")
        body[rows, year_at + 1] = self.token("year", eras * self.years_per_era + years)
        body[rows, decoy_at] = self.token("born")
        body[rows, decoy_at + 1] = self.token("year", rng.integers(self.n_years, size=n))
        content = np.concatenate([body, ent_tok[:, None], np.full((n, 1), self.token("was")),
                                  self.token("attribute", answer)[:, None]], 1)
        ids = torch.cat([torch.full((n, 1), BOS_ID), _ids(content)], 1)
        meta = [{"group": str(g), "entity": int(e), "era": int(k), "year": int(k * self.years_per_era + y),
                 "answer": int(a), "decoy_pos": int(2 + d)}
                for g, e, k, y, a, d in zip(groups, entities, eras, years, answer, decoy_at)]
        return PlantedItems(self.kind, ids, 3 + self.body, groups, torch.as_tensor(2 + year_at[:, None]),
                            torch.full((n,), -1), meta)

    def sample(self, split: str, batch: int, rng: np.random.Generator) -> PlantedItems:
        """``batch`` random items of the split (train: any year but the held-out one of its era; test: that one)."""
        held = self.tables["held"]
        groups = np.where(rng.random(batch) < self.p_temporal, "temporal", "invariant")
        entities = rng.integers(self.n_entities, size=batch)
        eras = rng.integers(self.n_eras, size=batch)
        held_year = np.where(groups == "temporal", held["temporal"][entities, eras], held["invariant"][entities, eras])
        if _split(split) == "test":
            years = held_year
        else:  # uniform over the other years of the era
            years = (held_year + 1 + rng.integers(self.years_per_era - 1, size=batch)) % self.years_per_era
        return self.items(groups, entities, eras, years, rng)

    def year_swapped(self, items: PlantedItems, shift: int = 1) -> PlantedItems:
        """Corrupted twins of time-conditioned items (Park et al. 2025's clean/corrupted pairs): the IN year moved
        ``shift`` eras on (same year within its era), everything else equal, the answer that era's attribute."""
        items = items.of("temporal")
        ids = items.input_ids.clone()
        rows = torch.arange(len(items))
        src = items.source_pos[:, 0]
        eras = (torch.tensor([m["era"] for m in items.meta]) + shift) % self.n_eras
        entities = torch.tensor([m["entity"] for m in items.meta])
        within = (ids[rows, src] - N_SPECIAL - int(self.token("year"))) % self.years_per_era
        ids[rows, src] = _ids(self.token("year", (eras * self.years_per_era + within).numpy()))
        answer = self.tables["temporal"][entities.numpy(), eras.numpy()]
        ids[:, -1] = _ids(self.token("attribute", answer))
        meta = [{**m, "era": int(k), "year": int(k * self.years_per_era + w), "answer": int(a)}
                for m, k, w, a in zip(items.meta, eras.tolist(), within.tolist(), answer)]
        return dataclasses.replace(items, input_ids=ids, meta=meta)

    def all_test_items(self, seed: int = 0) -> PlantedItems:
        """Every held-out (entity, era) of both kinds once, with seeded body arrangements."""
        held = self.tables["held"]
        g, e, k = np.meshgrid(np.array(self.GROUPS), np.arange(self.n_entities), np.arange(self.n_eras), indexing="ij")
        g, e, k = g.ravel(), e.ravel(), k.ravel()
        years = np.where(g == "temporal", held["temporal"][e, k], held["invariant"][e, k])
        return self.items(g, e, k, years, np.random.default_rng(seed))


# --------------------------------------------------------------------------------------------- conflict facts
@dataclass(frozen=True)
class ConflictWorld:
    """Entities with memorised attributes; contexts that contradict them; a cue saying which to follow."""

    n_entities: int = 48
    n_attributes: int = 16
    n_pairs: int = 3  # (entity, attribute) statements in the context, each contradicting memory
    n_queries: int = 3  # queries per training row (held-out items have one)
    held_out: float = 0.25  # share of each entity's conflicting attributes that no training context states
    p_closed: float = 0.3  # share of closed-book training queries (about an entity the context does not mention)
    p_context: float = 0.5  # share of conflict queries cued CTX
    world_seed: int = 0

    kind = "conflict_facts"
    GROUPS = ("context", "memory", "closed")

    def __post_init__(self):
        if self.n_pairs < 1 or self.n_queries < 1 or self.n_entities < self.n_pairs + self.n_queries + 1 \
                or self.n_attributes < 2:
            raise InputError("conflict_facts needs n_pairs >= 1, n_queries >= 1, n_entities > n_pairs + n_queries "
                             "and n_attributes >= 2")
        if not 0 < self.held_out < 1 or not 0 <= self.p_closed < 1 or not 0 <= self.p_context <= 1:
            raise InputError("conflict_facts needs 0 < held_out < 1, 0 <= p_closed < 1 and 0 <= p_context <= 1")
        if not 1 <= round(self.held_out * (self.n_attributes - 1)) <= self.n_attributes - 2:
            raise InputError("conflict_facts: held_out x (n_attributes - 1) must leave at least one held-out and one "
                             "training context attribute per entity")

    @property
    def n_content(self) -> int:
        return 2 + self.n_entities + self.n_attributes

    def token(self, what: str, index=0):
        """Content index of 'mem', 'ctx', 'entity' or 'attribute' number ``index``."""
        starts = {"mem": 0, "ctx": 1, "entity": 2, "attribute": 2 + self.n_entities}
        return starts[what] + np.asarray(index)

    @cached_property
    def tables(self) -> dict:
        """``memory`` (n_entities,) attribute numbers and ``held_out`` (n_entities, n_attributes) bool: the
        conflicting (entity, attribute) statements that only held-out items make."""
        rng = np.random.default_rng(self.world_seed)
        memory = rng.integers(self.n_attributes, size=self.n_entities)
        k = round(self.held_out * (self.n_attributes - 1))
        held = np.zeros((self.n_entities, self.n_attributes), dtype=bool)
        for e in range(self.n_entities):
            held[e, rng.permutation(np.delete(np.arange(self.n_attributes), memory[e]))[:k]] = True
        return {"memory": memory, "held_out": held}

    def _conflicting(self, entities, rng, held=False) -> np.ndarray:
        """A context attribute for each entity, different from its memorised one: one of its held-out statements
        where ``held`` (a bool, or one per entity), else one of its training statements (uniformly)."""
        entities = np.asarray(entities)
        t = self.tables
        table = t["held_out"][entities]
        allowed = np.where(np.asarray(held)[..., None], table, ~table)
        allowed = allowed & (np.arange(self.n_attributes) != t["memory"][entities][..., None])
        return np.argmax(rng.random(allowed.shape) * allowed, axis=-1)

    def _context(self, entities, rng, held=False) -> tuple[list[int], np.ndarray]:
        """Context content tokens stating a conflicting attribute for each entity, and those attributes (held-out
        statements where ``held`` is True)."""
        attrs = self._conflicting(entities, rng, held)
        pairs = np.stack([self.token("entity", entities), self.token("attribute", attrs)], 1)
        return pairs.ravel().tolist(), attrs

    def items(self, groups, entities, rng: np.random.Generator, held: bool = False) -> PlantedItems:
        """One-query items: a context of ``n_pairs`` conflicting statements (the queried entity's at a seeded slot,
        a held-out statement if ``held``; "closed" items' contexts do not mention the entity), the cue, the entity."""
        memory = self.tables["memory"]
        groups, entities = np.asarray(groups), np.asarray(entities, dtype=np.int64)
        n, p = len(groups), self.n_pairs
        rows, source, foil, meta = [], [], [], []
        for g, e in zip(groups, entities):
            others = rng.permutation(np.delete(np.arange(self.n_entities), e))[:p]
            slot = int(rng.integers(p))
            if g != "closed":
                others[slot] = e
            context, attrs = self._context(others, rng, np.arange(p) == slot if held else False)
            c = int(attrs[slot]) if g != "closed" else None
            answer = c if g == "context" else int(memory[e])
            cue = self.token("ctx") if g == "context" else self.token("mem")
            rows.append(context + [int(cue), int(self.token("entity", e)), int(self.token("attribute", answer))])
            source.append(-1 if g == "closed" else 2 + 2 * slot)  # BOS, then pairs: slot s's attribute at 2 + 2s
            other = None if g == "closed" else (int(memory[e]) if g == "context" else c)
            foil.append(-1 if other is None else int(self.token("attribute", other)) + N_SPECIAL)
            meta.append({"group": str(g), "entity": int(e), "memory": int(memory[e]), "context": c,
                         "answer": answer})
        ids = torch.cat([torch.full((n, 1), BOS_ID), _ids(rows)], 1)
        return PlantedItems(self.kind, ids, 2 * p + 3, groups, torch.as_tensor(source)[:, None],
                            torch.as_tensor(foil), meta)

    def train_batch(self, batch: int, rng: np.random.Generator) -> ToyBatch:
        """Training rows: a context of conflicting statements, then ``n_queries`` queries about distinct entities
        (closed-book about an entity not in the context, or cued about a trained entity that is)."""
        memory = self.tables["memory"]
        n, p = batch, self.n_pairs
        rows = np.arange(n)
        order = np.argsort(rng.random((n, self.n_entities)), 1)  # [:p] in the context, the rest outside
        in_context = order[:, :p]
        attrs = self._conflicting(in_context, rng)
        context = np.stack([self.token("entity", in_context), self.token("attribute", attrs)], 2).reshape(n, 2 * p)
        ask_order = np.tile(np.arange(p), (n, 1))  # the context's entities are in random order already
        n_askable = np.full(n, p)
        used_ctx, used_out = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        parts, groups = [np.full((n, 1), BOS_ID - N_SPECIAL), context], [np.full((n, 1 + 2 * p), "", dtype=object)]
        for _ in range(self.n_queries):
            ask = (rng.random(n) >= self.p_closed) & (used_ctx < n_askable)
            slot = ask_order[rows, np.minimum(used_ctx, p - 1)]
            entity = np.where(ask, in_context[rows, slot], order[rows, p + used_out])
            cued_ctx = ask & (rng.random(n) < self.p_context)
            answer = np.where(cued_ctx, attrs[rows, slot], memory[entity])
            cue = np.where(cued_ctx, self.token("ctx"), self.token("mem"))
            used_ctx, used_out = used_ctx + ask, used_out + ~ask
            parts.append(np.stack([cue, self.token("entity", entity), self.token("attribute", answer)], 1))
            group = np.where(ask, np.where(cued_ctx, "context", "memory"), "closed")
            groups.append(np.concatenate([np.full((n, 2), "", dtype=object), group[:, None].astype(object)], 1))
        return _query_batch(self.kind, _ids(np.concatenate(parts, 1)), np.concatenate(groups, 1))

    def sample(self, split: str, batch: int, rng: np.random.Generator) -> PlantedItems:
        """One-query items. Train: closed-book and conflict items with training statements; test: conflict items
        whose queried entity's statement is a held-out one."""
        entities = rng.integers(self.n_entities, size=batch)
        cued = np.where(rng.random(batch) < self.p_context, "context", "memory")
        if _split(split) == "test":
            return self.items(cued, entities, rng, held=True)
        return self.items(np.where(rng.random(batch) < self.p_closed, "closed", cued), entities, rng)

    def all_test_items(self, seed: int = 0, per_entity: int = 2) -> PlantedItems:
        """Each entity ``per_entity`` times under each cue, stating held-out attributes (seeded contexts)."""
        entities = np.tile(np.repeat(np.arange(self.n_entities), per_entity), 2)
        groups = np.repeat(np.array(["context", "memory"]), self.n_entities * per_entity)
        return self.items(groups, entities, np.random.default_rng(seed), held=True)

    def closed_book(self, items: PlantedItems, seed: int = 0) -> PlantedItems:
        """Closed-book twins of items: same entity, a context that does not mention it, cue MEM."""
        entities = [m["entity"] for m in items.meta]
        return self.items(np.full(len(items), "closed"), entities, np.random.default_rng(seed))


# --------------------------------------------------------------------------------------------- kv retrieval
@dataclass(frozen=True)
class RetrievalWorld:
    """A key-value store in context queried at the end; a few memorised keys answered from the weights."""

    n_keys: int = 16
    n_values: int = 32
    n_pairs: int = 6
    value_len: int = 2
    n_queries: int = 3  # queries per training row (held-out items have one)
    n_memorized: int = 4
    p_closed: float = 0.2
    world_seed: int = 0

    kind = "kv_retrieval"
    GROUPS = ("retrieval", "closed")

    def __post_init__(self):
        if self.n_pairs < 1 or self.n_keys < self.n_pairs or self.value_len < 1 \
                or self.n_values < self.n_pairs * self.value_len or not 1 <= self.n_queries <= self.n_pairs:
            raise InputError("kv_retrieval needs n_pairs >= 1, n_keys >= n_pairs, value_len >= 1, "
                             "n_values >= n_pairs x value_len (values are distinct within a store) and "
                             "1 <= n_queries <= n_pairs")
        if self.n_memorized < 0 or not 0 <= self.p_closed < 1 or (self.p_closed > 0 and self.n_memorized < 1):
            raise InputError("kv_retrieval needs n_memorized >= 0, 0 <= p_closed < 1, and n_memorized >= 1 "
                             "when p_closed > 0")

    @property
    def n_content(self) -> int:
        return 1 + self.n_keys + self.n_values + self.n_memorized * (1 + self.value_len)

    def token(self, what: str, index=0):
        """Content index of 'query', 'key', 'value', 'memorized_key' or 'memorized_value' number ``index``."""
        starts = {"query": 0, "key": 1, "value": 1 + self.n_keys, "memorized_key": 1 + self.n_keys + self.n_values,
                  "memorized_value": 1 + self.n_keys + self.n_values + self.n_memorized}
        return starts[what] + np.asarray(index)

    @cached_property
    def tables(self) -> dict:
        """``memorized`` (n_memorized, value_len): the memorised keys' values (memorised-value numbers)."""
        rng = np.random.default_rng(self.world_seed)
        order = rng.permutation(self.n_memorized * self.value_len)
        return {"memorized": order.reshape(self.n_memorized, self.value_len)}

    @property
    def prompt_len(self) -> int:
        return 1 + self.n_pairs * (1 + self.value_len) + 2

    def _stores(self, n: int, rng: np.random.Generator):
        """(n, n_pairs) keys, (n, n_pairs, value_len) values (distinct within a row) and the store content tokens."""
        p, v = self.n_pairs, self.value_len
        keys = np.argsort(rng.random((n, self.n_keys)), 1)[:, :p]
        values = np.argsort(rng.random((n, self.n_values)), 1)[:, :p * v].reshape(n, p, v)
        store = np.concatenate([self.token("key", keys)[..., None], self.token("value", values)], 2).reshape(n, -1)
        return keys, values, store

    def _query(self, keys, values, slot, closed, mem) -> tuple[np.ndarray, np.ndarray]:
        """(n, 2 + value_len) query content tokens (Q, key, value...) and the answers' value tokens."""
        rows = np.arange(len(slot))
        q_key = np.where(closed, self.token("memorized_key", mem), self.token("key", keys[rows, slot]))
        answer = np.where(closed[:, None], self.token("memorized_value", self.tables["memorized"][mem]),
                          self.token("value", values[rows, slot]))
        return np.concatenate([np.full((len(slot), 1), self.token("query")), q_key[:, None], answer], 1), answer

    def sample(self, split: str, batch: int, rng: np.random.Generator, p_closed: float | None = None) -> PlantedItems:
        """One-query items over random stores; a share ``p_closed`` asks a memorised key instead of a stored one."""
        _split(split)
        p_closed = self.p_closed if p_closed is None else p_closed
        n, p, v = batch, self.n_pairs, self.value_len
        keys, values, store = self._stores(n, rng)
        slot = rng.integers(p, size=n)
        closed = rng.random(n) < p_closed
        mem = rng.integers(max(1, self.n_memorized), size=n) % max(1, self.n_memorized)
        query, _ = self._query(keys, values, slot, closed, mem)
        ids = torch.cat([torch.full((n, 1), BOS_ID), _ids(np.concatenate([store, query], 1)),
                         torch.full((n, 1), EOS_ID)], 1)
        first = 1 + slot * (1 + v) + 1  # position of the slot's first value token
        source = np.concatenate([first[:, None] + np.arange(v), np.full((n, 1), -1)], 1)
        source[closed] = -1
        groups = np.where(closed, "closed", "retrieval")
        meta = [{"group": str(g), "slot": int(s), "depth": float(100 * s / max(1, p - 1))}
                for g, s in zip(groups, slot)]
        return PlantedItems(self.kind, ids, self.prompt_len, groups, torch.as_tensor(source), torch.full((n,), -1),
                            meta)

    def all_test_items(self, seed: int = 0, n: int = 128, p_closed: float = 0.25) -> PlantedItems:
        """``n`` held-out stores (a seeded stream the training batches never use)."""
        return self.sample("test", n, np.random.default_rng([seed, 7919]), p_closed=p_closed)

    def train_batch(self, batch: int, rng: np.random.Generator) -> ToyBatch:
        """Training rows: a store, then ``n_queries`` queries (``Q key value... EOS``) about distinct stored keys or,
        with probability ``p_closed`` each, a memorised key."""
        n, p, v = batch, self.n_pairs, self.value_len
        keys, values, store = self._stores(n, rng)
        slots = np.argsort(rng.random((n, p)), 1)[:, :self.n_queries]
        parts = [np.full((n, 1), BOS_ID - N_SPECIAL), store]
        groups = np.full((n, 1 + store.shape[1]), "", dtype=object)
        for q in range(self.n_queries):
            closed = rng.random(n) < self.p_closed
            mem = rng.integers(max(1, self.n_memorized), size=n) % max(1, self.n_memorized)
            query, _ = self._query(keys, values, slots[:, q], closed, mem)
            parts += [query, np.full((n, 1), EOS_ID - N_SPECIAL)]
            g = np.where(closed, "closed", "retrieval")[:, None]
            groups = np.concatenate([groups, np.full((n, 2), ""), np.repeat(g, v + 1, 1)], 1)
        return _query_batch(self.kind, _ids(np.concatenate(parts, 1)), groups)


def _query_batch(kind: str, ids: torch.Tensor, groups: np.ndarray) -> ToyBatch:
    """A training batch whose targets are the positions with a non-empty group name; one segment per group."""
    target = torch.as_tensor(groups != "")
    segments = {str(g): torch.as_tensor(groups == g) for g in np.unique(groups) if g}
    return ToyBatch(ids, target, segments, {"kind": kind})


WORLDS = {w.kind: w for w in (TemporalWorld, ConflictWorld, RetrievalWorld)}


def world(data: dict):
    """The world of a planted data config ``{"kind": ..., params}`` (``split`` is ignored here)."""
    data = dict(data)
    kind = data.pop("kind", None)
    data.pop("split", None)
    if kind not in WORLDS:
        raise InputError(f"{kind!r} is not a planted-mechanism data kind: use one of {', '.join(WORLDS)}")
    names = {f.name for f in dataclasses.fields(WORLDS[kind])}
    unknown = set(data) - names
    if unknown:
        raise InputError(f"unknown {kind} parameter(s) {', '.join(sorted(unknown))}: the parameters are "
                         f"{', '.join(sorted(names | {'split'}))}")
    return _world(kind, tuple(sorted(data.items())))


@lru_cache(maxsize=16)
def _world(kind: str, params: tuple):
    """One world object per configuration, so that its fact tables are drawn once per process."""
    return WORLDS[kind](**dict(params))


def _generator(kind: str):
    def generate(vocab_size: int, batch: int, gen: torch.Generator, split: str = "train", **params) -> ToyBatch:
        w = world({"kind": kind, **params})
        _check_vocab(vocab_size, w.n_content, kind)
        if _split(split) == "train" and hasattr(w, "train_batch"):
            return w.train_batch(batch, _rng(gen))
        return w.sample(split, batch, _rng(gen)).to_batch()

    generate.__name__ = kind
    generate.__doc__ = f"Training batches of the planted {kind} world (``split`` train or test); see {__name__}."
    return generate


PLANTED_GENERATORS = {kind: _generator(kind) for kind in WORLDS}
