"""Loading the model and tokenizer (hub id, local directory, or builtin random model) and
recording exactly which model ran."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from cpueval.config import ModelConfig
from cpueval.errors import UserError
from cpueval.tasks.base import Task

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    identity: dict[str, Any]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files_hash(files: list[Path]) -> Optional[str]:
    if not files:
        return None
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.name.encode())
        digest.update(_sha256(path).encode())
    return digest.hexdigest()


def _model_dir(name_or_path: str, revision: Optional[str]) -> Optional[Path]:
    """The directory the weights were read from: the local dir, or the hub cache snapshot."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        return local.resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, revision=revision, local_files_only=True))
    except Exception:  # not cached as a snapshot (e.g. a custom cache layout): no file hashes then
        return None


def _load_weights(config: ModelConfig, task: Task, source: str) -> PreTrainedModel:
    kwargs: dict[str, Any] = {"revision": config.revision, "trust_remote_code": config.trust_remote_code}
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    _check_weight_files(config, source)
    try:
        return task.auto_model_class.from_pretrained(source, dtype=torch.float32, **kwargs)
    except (OSError, ValueError, KeyError, ImportError, RuntimeError) as err:
        first = _first_line(err)
        if config.attn_implementation and ("attn" in first.lower() or "attention" in first.lower()
                                           or isinstance(err, ImportError)):
            raise UserError(f"model.attn_implementation={config.attn_implementation} cannot run with this model or "
                            f"environment ({first}); use sdpa, eager or null (the library default)") from None
        raise UserError(f"model.name_or_path={config.name_or_path} could not be loaded as a "
                        f"{task.auto_model.replace('AutoModelFor', '')} model: {first}") from None


def _check_weight_files(config: ModelConfig, source: str) -> None:
    """A truncated or garbage safetensors file fails deep inside loading without its name: open each first."""
    local = Path(source).expanduser()
    if not local.is_dir():
        return
    from safetensors import safe_open

    for path in sorted(local.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as err:  # SafetensorError, OSError: the file is not a complete safetensors file
            raise UserError(f"model.name_or_path={config.name_or_path}: weights file {path} is not a valid "
                            f"safetensors file ({_first_line(err)}); copy it again (truncated download?)") from None


def _load_tokenizer(config: ModelConfig, source: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer (or model.tokenizer's). A local directory without tokenizer files is
    refused rather than given transformers' fallback tokenizer."""
    key, value = ("model.tokenizer", config.tokenizer) if config.tokenizer else ("model.name_or_path", source)
    shown = config.tokenizer or config.name_or_path
    local = Path(value).expanduser()
    looks_local = value.startswith((".", "/", "~")) or local.exists()
    if looks_local and not local.is_dir():
        raise UserError(f"{key}={shown}: no such directory; give a tokenizer directory or hub id")
    if local.is_dir() and not any((local / name).exists() for name in TOKENIZER_FILES):
        raise UserError(f"{key}={shown} has no tokenizer files (none of {', '.join(TOKENIZER_FILES[:3])}, ...); "
                        f"copy the model's tokenizer files into it or set model.tokenizer=<hub id or directory>")
    try:
        tokenizer = AutoTokenizer.from_pretrained(value, revision=config.revision, use_fast=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{key}={shown}: the tokenizer could not be loaded: {_first_line(err)}") from None
    if not tokenizer.is_fast:
        raise UserError(f"the tokenizer of {shown} is not a fast tokenizer; offset mappings need one "
                        f"(set model.tokenizer= to a fast tokenizer)")
    return tokenizer


def check_tokenizer_fits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: ModelConfig) -> None:
    """Refuse a tokenizer whose token ids the model's embedding table does not cover (another model's
    tokenizer): every id past the table would fail or, worse, index a wrong row."""
    rows = model.get_input_embeddings().num_embeddings
    key = f"model.tokenizer={config.tokenizer}" if config.tokenizer else f"model.name_or_path={config.name_or_path}"
    if len(tokenizer) > rows:
        raise UserError(f"{key}: the tokenizer has {len(tokenizer)} tokens but the model's embeddings have {rows} "
                        f"rows: tokenizer and model do not match; use the model's own tokenizer")
    special = {t: i for t, i in zip(tokenizer.all_special_tokens, tokenizer.all_special_ids) if i is None or i >= rows}
    if special:
        raise UserError(f"{key}: special tokens {special} have ids outside the model's {rows} embedding rows; "
                        f"use the model's own tokenizer")


def max_positions(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> Optional[int]:
    """The longest sequence the model (position embeddings) and tokenizer (model_max_length) accept."""
    limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
    limits = [int(n) for n in limits if isinstance(n, int) and 0 < n < 1_000_000]
    return min(limits) if limits else None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _resolve_source(config: ModelConfig, task: Task, cache_dir: Optional[str]) -> tuple[str, bool]:
    from cpueval.assets.builtin import ensure_builtin_model, is_builtin

    if is_builtin(config.name_or_path):
        try:
            path = ensure_builtin_model(config.name_or_path, task.auto_model, task.builtin_labels(),
                                        Path(cache_dir) if cache_dir else None)
        except ValueError as err:
            raise UserError(f"model.name_or_path={config.name_or_path}: {err}") from None
        return str(path), True
    looks_local = config.name_or_path.startswith((".", "/", "~")) or Path(config.name_or_path).expanduser().exists()
    if looks_local and not Path(config.name_or_path).expanduser().is_dir():
        raise UserError(f"model.name_or_path={config.name_or_path}: no such directory; give a local model "
                        f"directory (with config.json) or a hub id")
    return config.name_or_path, False


# Any one of these in a local directory makes AutoTokenizer load the model's own tokenizer; without
# them transformers 5 builds a near-empty fallback tokenizer and the run scores garbage without a word.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")


def load_model(config: ModelConfig, task: Task, cache_dir: Optional[str]) -> LoadedModel:
    source, builtin = _resolve_source(config, task, cache_dir)
    model = _load_weights(config, task, source)
    tokenizer = _load_tokenizer(config, source)
    model.eval()
    task.validate_model(model, config.name_or_path)
    check_tokenizer_fits(model, tokenizer, config)
    model_dir = _model_dir(source, config.revision)
    identity = {
        "name_or_path": config.name_or_path,
        "resolved_path": str(model_dir) if model_dir else None,
        "revision": None if Path(source).expanduser().is_dir() else config.revision,  # not applied to a local dir
        "builtin_random_weights": builtin,
        "model_class": type(model).__name__,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "config_sha256": _files_hash([model_dir / "config.json"]) if model_dir and (model_dir / "config.json").exists() else None,
        "weights_sha256": _files_hash([p for p in model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES]) if model_dir else None,
        "tokenizer_sha256": hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
    }
    return LoadedModel(model=model, tokenizer=tokenizer, identity=identity)
