"""Loading evaluation examples: a hub dataset by name, or a local file in one of several formats.

Local formats: the official nested SQuAD JSON, flat JSON (records or {"data": [...]}), JSON lines,
CSV, TSV and parquet. All end up as a `datasets.Dataset` with the task's canonical column names.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

import datasets

from cpueval.config import DataConfig
from cpueval.errors import UserError

log = logging.getLogger(__name__)

SUFFIX_FORMATS = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet",
                  ".conll": "conll", ".txt": "conll", ".iob": "conll", ".bio": "conll"}


def resolve_path(path: str) -> Path:
    """User paths are relative to where the command was started (Hydra does not chdir here)."""
    return Path(path).expanduser().resolve()


def _squad_records(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten the official nested SQuAD format (v1.1 and v2.0) into one record per question."""
    records = []
    for article in payload["data"]:
        title = article.get("title", "")
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                answers = qa.get("answers", [])
                records.append({
                    "id": str(qa["id"]),
                    "title": title,
                    "context": context,
                    "question": qa["question"],
                    "answers": {"text": [a["text"] for a in answers],
                                "answer_start": [int(a["answer_start"]) for a in answers]},
                })
    return records


def _is_nested_squad(payload: Any) -> bool:
    return (isinstance(payload, dict) and isinstance(payload.get("data"), list) and payload["data"]
            and isinstance(payload["data"][0], dict) and "paragraphs" in payload["data"][0])


def _load_json(path: Path) -> datasets.Dataset:
    try:
        payload = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        # maybe JSON lines saved with a .json suffix
        try:
            return _load_with_datasets("json", path)
        except UserError:
            raise UserError(f"data file {path} is not valid JSON: {err.msg} at line {err.lineno}") from None
    if _is_nested_squad(payload):
        return datasets.Dataset.from_list(_squad_records(payload))
    if isinstance(payload, dict) and isinstance(payload.get("data"), list):
        payload = payload["data"]
    if not isinstance(payload, list) or not all(isinstance(r, dict) for r in payload):
        raise UserError(f"data file {path}: expected the SQuAD nested format, a list of records, "
                        f"or {{\"data\": [records]}}")
    return datasets.Dataset.from_list(payload)


def _load_with_datasets(builder: str, path: Path, **kwargs: Any) -> datasets.Dataset:
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as err:  # datasets raises many types for malformed files
        raise UserError(f"data file {path} could not be read as {builder}: {str(err).splitlines()[0]}") from None


# Only empty cells are missing: pandas' default also reads the words "null", "NA", "nan" ... as missing,
# and those are text in sentence data. (A byte-order mark before the header is dropped by the reader.)
TEXT_TABLE = {"keep_default_na": False, "na_values": [""]}

LOCAL_READERS: dict[str, Callable[[Path], datasets.Dataset]] = {
    "squad": _load_json,
    "json": _load_json,
    "jsonl": lambda p: _load_with_datasets("json", p),
    "csv": lambda p: _load_with_datasets("csv", p, **TEXT_TABLE),
    "tsv": lambda p: _load_with_datasets("csv", p, delimiter="\t", quoting=3, **TEXT_TABLE),
    "parquet": lambda p: _load_with_datasets("parquet", p),
}


def register_reader(fmt: str, reader: Callable[[Path], datasets.Dataset], *suffixes: str) -> None:
    """Let a task module add a file format (e.g. CoNLL) without editing this module."""
    LOCAL_READERS[fmt] = reader
    for suffix in suffixes:
        SUFFIX_FORMATS[suffix] = fmt


def _load_local(config: DataConfig) -> tuple[datasets.Dataset, str]:
    path = resolve_path(config.path)
    if not path.is_file():
        raise UserError(f"data.path={config.path}: no such file ({path})")
    fmt = config.format if config.format != "auto" else SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt not in LOCAL_READERS:
        known = ", ".join(sorted(LOCAL_READERS))
        raise UserError(f"data.path={config.path}: cannot tell its format from the suffix "
                        f"'{path.suffix}'; set data.format to one of: {known}")
    return LOCAL_READERS[fmt](path), str(path)


def _load_hub(config: DataConfig) -> tuple[datasets.Dataset, str]:
    source = config.name + (f"/{config.subset}" if config.subset else "")
    try:
        dataset = datasets.load_dataset(config.name, config.subset, split=config.split, revision=config.revision)
    except ValueError as err:
        message = str(err).splitlines()[0]
        if "split" in message.lower():
            raise UserError(f"data.split={config.split} is not a split of {source}: {message}") from None
        raise UserError(f"data.name={source} could not be loaded: {message}") from None
    except Exception as err:  # network, missing dataset: one line with the way out
        raise UserError(f"data.name={source} could not be loaded ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}); offline, point data.path= "
                        f"at a local file instead") from None
    return dataset, f"hub:{source}@{config.revision or 'main'}:{config.split}"


def load_examples(config: DataConfig) -> tuple[datasets.Dataset, str]:
    """The examples to evaluate (renamed to canonical columns, limited by max_eval_samples), and a
    description of where they came from."""
    if bool(config.path) == bool(config.name):
        raise UserError("set exactly one of data.path=<local file> or data.name=<hub dataset> "
                        f"(got path={config.path!r}, name={config.name!r})")
    dataset, source = _load_local(config) if config.path else _load_hub(config)
    renames = {actual: canonical for canonical, actual in (config.columns or {}).items() if actual and actual != canonical}
    missing = [actual for actual in renames if actual not in dataset.column_names]
    if missing:
        raise UserError(f"data.columns names {missing} but {source} has columns {dataset.column_names}")
    dataset = dataset.rename_columns(renames) if renames else dataset
    if config.max_eval_samples is not None:
        if config.max_eval_samples <= 0:
            raise UserError(f"data.max_eval_samples={config.max_eval_samples} must be > 0 (or null for all)")
        dataset = dataset.select(range(min(config.max_eval_samples, len(dataset))))
    if len(dataset) == 0:
        raise UserError(f"{source} holds no examples")
    return dataset, source


def require_columns(dataset: datasets.Dataset, columns: tuple[str, ...], source: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise UserError(f"{source} lacks the column(s) {missing} this task needs (has {dataset.column_names}); "
                        f"map yours with data.columns.<name>=<your column>")


def fingerprint(dataset: datasets.Dataset) -> str:
    """Content hash of the evaluated examples (same rows and values -> same hash, wherever loaded)."""
    digest = hashlib.sha256()
    for batch in dataset.with_format("arrow").iter(batch_size=1000):
        for name in sorted(batch.column_names):
            digest.update(name.encode())
            digest.update(json.dumps(batch.column(name).to_pylist(), sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()
