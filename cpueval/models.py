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


def _resolve_source(config: ModelConfig, task: Task, cache_dir: Optional[str]) -> tuple[str, bool]:
    from cpueval.assets.builtin import ensure_builtin_model, is_builtin

    if is_builtin(config.name_or_path):
        try:
            path = ensure_builtin_model(config.name_or_path, task.auto_model_class.__name__, task.builtin_labels(),
                                        Path(cache_dir) if cache_dir else None)
        except ValueError as err:
            raise UserError(f"model.name_or_path={config.name_or_path}: {err}") from None
        return str(path), True
    looks_local = config.name_or_path.startswith((".", "/", "~")) or Path(config.name_or_path).expanduser().exists()
    if looks_local and not Path(config.name_or_path).expanduser().is_dir():
        raise UserError(f"model.name_or_path={config.name_or_path}: no such directory; give a local model "
                        f"directory (with config.json) or a hub id")
    return config.name_or_path, False


def load_model(config: ModelConfig, task: Task, cache_dir: Optional[str]) -> LoadedModel:
    source, builtin = _resolve_source(config, task, cache_dir)
    kwargs: dict[str, Any] = {"revision": config.revision, "trust_remote_code": config.trust_remote_code}
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    try:
        model = task.auto_model_class.from_pretrained(source, dtype=torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or source, revision=config.revision, use_fast=True)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"model.name_or_path={config.name_or_path} could not be loaded as a "
                        f"{task.auto_model_class.__name__.replace('AutoModelFor', '')} model: {first}") from None
    if not tokenizer.is_fast:
        raise UserError(f"the tokenizer of {config.tokenizer or config.name_or_path} is not a fast tokenizer; "
                        f"offset mappings need one (set model.tokenizer= to a fast tokenizer)")
    model.eval()
    task.validate_model(model, config.name_or_path)
    model_dir = _model_dir(source, config.revision)
    identity = {
        "name_or_path": config.name_or_path,
        "resolved_path": str(model_dir) if model_dir else None,
        "revision": config.revision,
        "builtin_random_weights": builtin,
        "model_class": type(model).__name__,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "config_sha256": _files_hash([model_dir / "config.json"]) if model_dir and (model_dir / "config.json").exists() else None,
        "weights_sha256": _files_hash([p for p in model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES]) if model_dir else None,
        "tokenizer_sha256": hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
    }
    return LoadedModel(model=model, tokenizer=tokenizer, identity=identity)
