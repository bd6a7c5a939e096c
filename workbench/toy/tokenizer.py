"""A word-level tokenizer for toy models: ``<pad> <bos> <eos> <unk>`` then the words ``t0 t1 ...`` (one id each)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..errors import InputError

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
N_SPECIAL = len(SPECIALS)


def word(i: int) -> str:
    """The word of content token ``i`` (token id ``i + 4``)."""
    return f"t{i}"


def toy_tokenizer(vocab_size: int, folder: str | Path | None = None):
    """A ``PreTrainedTokenizerFast`` over ``vocab_size`` ids (4 specials + words), saved in ``folder`` and loaded back.

    Words are whitespace-separated; the tokenizer does not add BOS by itself (stimuli put it in front). Loading it
    back from ``folder`` sets ``name_or_path`` so that TransformerLens's bridge can reload it.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if vocab_size <= N_SPECIAL + 1:
        raise InputError(f"a toy vocabulary needs more than {N_SPECIAL + 1} ids, got {vocab_size}")
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="workbench-toy-tokenizer-"))
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    vocab.update({word(i): i + N_SPECIAL for i in range(vocab_size - N_SPECIAL)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", clean_up_tokenization_spaces=False)
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)
