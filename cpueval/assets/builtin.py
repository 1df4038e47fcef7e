"""Builtin models built offline: a tiny BERT with random weights and a tokenizer made from the sample assets.

They exist so that the default job runs on a fresh clone with no network and no download. Their
accuracy is meaningless (the weights are random); they exercise the pipeline, not the model.

A build is deterministic (same assets, labels and library versions give the same files), cached under
``$CPUEVAL_CACHE`` (default ``~/.cache/cpueval``) in ``builtin/<name>-<head>-<hash>``, and published
with an atomic ``os.rename`` so that parallel jobs never see a half-written directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import string
import tempfile
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

from cpueval import cache_files

log = logging.getLogger("cpueval")

BUILTIN_PREFIX = "builtin:"
# Bump when the build changes in a way the hash inputs do not capture (code, sizes, vocab rules).
BUILDER_VERSION = 2  # 2: the marker file lists every file's sha256 (cpueval/cache_files.py)
SEED = 0
MARKER_FILE = "cpueval_builtin.json"
ASSETS_DIR = Path(__file__).resolve().parent
SAMPLE_FILES = ("sample_squad.json", "sample_squad_v2.json")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Words seen fewer times than this (and longer than 3 characters) get two pieces, "head" and
# "##tail", instead of a token of their own, so that the sample data also exercises "##" sub-word
# tokens and their offsets, much as rare words and names do with a real BERT vocab.
MIN_WORD_FREQUENCY = 2
MAX_VOCAB_SIZE = 4000


# Builtin name -> BertConfig sizes.
MODELS: dict[str, dict[str, int]] = {
    "builtin:tiny-bert": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
    },
    # bert-base-uncased's sizes (110M parameters at BERT's vocab; fewer with the sample vocab) with
    # random weights and the same tokenizer: realistic compute for timing sweeps, offline.
    "builtin:bert-base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
    },
}


def is_builtin(name: str) -> bool:
    """True for model names served by this module (``builtin:...``)."""
    return isinstance(name, str) and name.startswith(BUILTIN_PREFIX)


def known_models() -> list[str]:
    return sorted(MODELS)


def default_cache_dir() -> Path:
    """``$CPUEVAL_CACHE`` or ``~/.cache/cpueval``."""
    env = os.environ.get("CPUEVAL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cpueval"


def sample_texts() -> list[str]:
    """Contexts and questions of the sample assets, in file order, without duplicates."""
    texts: dict[str, None] = {}  # a dict keeps first-seen order and drops repeats (shared paragraphs)
    for file_name in SAMPLE_FILES:
        squad = json.loads((ASSETS_DIR / file_name).read_text(encoding="utf-8"))
        for article in squad["data"]:
            for paragraph in article["paragraphs"]:
                texts.setdefault(paragraph["context"])
                for qa in paragraph["qas"]:
                    texts.setdefault(qa["question"])
    return list(texts)


def ensure_builtin_model(
    name: str,
    head: str,
    labels: list[str] | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """Return a directory loadable with ``AutoTokenizer`` and the Auto class named `head` (e.g.
    "AutoModelForQuestionAnswering"), building it if needed. `labels`: the head's labels, None for none."""
    labels = _check_request(name, head, labels)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / "builtin" / f"{name[len(BUILTIN_PREFIX):]}-{head}-{_cache_key(name, head, labels)}"
    if final.exists():
        problem = cache_files.problem(final, MARKER_FILE)
        if problem is None:
            return final
        log.warning("builtin model cache %s is corrupt (%s): rebuilding it", final, problem)
        cache_files.discard(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        _build(tmp, name, head, labels)
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op once renamed
    return final


# --------------------------------------------------------------------------- request and cache


def _check_request(name: str, head: str, labels: list[str] | None) -> list[str] | None:
    """Validate the arguments; return labels as a list (or None for heads that take none)."""
    if name not in MODELS:
        raise ValueError(f"unknown builtin model {name!r}; known builtin models: {', '.join(known_models())}")
    if not head.startswith("AutoModelFor"):
        raise ValueError(f"head {head!r} for {name} is not a transformers AutoModelFor* class name")
    if labels is None:
        return None  # a head without labels (QA): one cache entry
    if not labels:
        raise ValueError(f"head {head!r} needs labels (a non-empty list of label names) to build {name}")
    labels = list(labels)
    if not all(isinstance(label, str) and label for label in labels):
        raise ValueError(f"labels must be non-empty strings, got {labels!r}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be unique, got {labels!r}")
    return labels


def _cache_key(name: str, head: str, labels: list[str] | None) -> str:
    """Short hash of everything the built files depend on."""
    payload = {
        "builder_version": BUILDER_VERSION,
        "name": name,
        "head": head,
        "labels": labels,
        "assets": {f: hashlib.sha256((ASSETS_DIR / f).read_bytes()).hexdigest() for f in SAMPLE_FILES},
        # The saved formats and the random init streams can change between library releases.
        "versions": _library_versions(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _library_versions() -> dict[str, str]:
    return {pkg: metadata.version(pkg) for pkg in ("torch", "transformers", "tokenizers")}


def _is_complete(path: Path) -> bool:
    return cache_files.problem(path, MARKER_FILE) is None


def _publish(tmp: Path, final: Path) -> None:
    """Atomically move a finished build into place; losing the race to another process is fine."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not _is_complete(final):
            raise
        # Another job published the same build first; ours is identical and gets discarded.


# --------------------------------------------------------------------------- build


def _build(target: Path, name: str, head: str, labels: list[str] | None) -> None:
    tokenizer = _build_tokenizer(sample_texts())
    model = _build_model(name, head, labels, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    tokenizer.save_pretrained(target)
    model.save_pretrained(target)
    # Written last: its presence marks a complete build.
    info = {
        "name": name,
        "head": head,
        "labels": labels,
        "random_weights": True,
        "note": "Randomly initialised weights for offline smoke runs; accuracy numbers are meaningless.",
        "seed": SEED,
        "built_by": f"{__name__} (builder version {BUILDER_VERSION})",
        "tokenizer": "WordPiece, vocab from the cpueval sample assets",
        "vocab_size": len(tokenizer),
        "assets": list(SAMPLE_FILES),
        "versions": _library_versions(),
    }
    cache_files.write_manifest(target, MARKER_FILE, info)


def _build_tokenizer(texts: list[str]) -> Any:
    """A lowercase BERT WordPiece tokenizer whose vocab comes from ``texts``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    vocab = _build_vocab(texts, normalizer, pre_tokenizer)
    ids = {token: i for i, token in enumerate(vocab)}
    backend = Tokenizer(models.WordPiece(vocab=ids, unk_token="[UNK]"))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",  # type ids 1 on the second segment, as BERT expects
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    # transformers 5 ignores vocab_file here; tokenizer_object is the way that works in 4.x and 5.x.
    return BertTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        do_lower_case=True,
        model_max_length=MODELS["builtin:tiny-bert"]["max_position_embeddings"],
    )


def _build_vocab(texts: list[str], normalizer: Any, pre_tokenizer: Any) -> list[str]:
    """Special tokens, characters, "##" characters, then word pieces by count.

    Not ``tokenizers.trainers.WordPieceTrainer``: it breaks ties in a per-process random order, so
    its vocab differs between runs. Counting words with the same normalizer and pre-tokenizer is
    deterministic, and the character pieces mean unseen words split into pieces instead of [UNK].
    """
    words: Counter[str] = Counter()
    for text in texts:
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    pieces: Counter[str] = Counter()
    for word, count in words.items():
        for piece in _word_pieces(word, count):
            pieces[piece] += count
    chars = set(string.ascii_lowercase + string.digits + string.punctuation)
    chars.update(c for word in words for c in word)
    chars_sorted = sorted(chars)
    word_chars = [c for c in chars_sorted if c.isalnum()]  # punctuation is always a word of its own
    vocab = list(SPECIAL_TOKENS) + chars_sorted + [f"##{c}" for c in word_chars]
    known = set(vocab)
    ranked = sorted((p for p in pieces if p not in known), key=lambda p: (-pieces[p], p))
    return vocab + ranked[: max(0, MAX_VOCAB_SIZE - len(vocab))]


def _word_pieces(word: str, count: int) -> list[str]:
    """Vocab entries for one word: itself when frequent or short, else its two halves."""
    if count >= MIN_WORD_FREQUENCY or len(word) <= 3:
        return [word]
    cut = (len(word) + 1) // 2
    return [word[:cut], f"##{word[cut:]}"]


def _build_model(name: str, head: str, labels: list[str] | None, vocab_size: int, pad_token_id: int) -> Any:
    """A BERT of the builtin's sizes with seeded random weights."""
    import torch
    import transformers

    extra: dict[str, Any] = {}
    if labels is not None:
        extra["id2label"] = dict(enumerate(labels))
        extra["label2id"] = {label: i for i, label in enumerate(labels)}
    config = transformers.BertConfig(vocab_size=vocab_size, pad_token_id=pad_token_id, **MODELS[name], **extra)
    auto_class = getattr(transformers, head)
    # fork_rng: seed for reproducible weights without disturbing the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = auto_class.from_config(config)
    return model.eval()
