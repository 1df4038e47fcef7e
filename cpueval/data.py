"""Loading evaluation examples: a hub dataset by name, or a local file in one of several formats.

Local formats: the official nested SQuAD JSON, flat JSON (records or {"data": [...]}), JSON lines,
CSV, TSV and parquet. All end up as a `datasets.Dataset` with the task's canonical column names.
"""

from __future__ import annotations

import csv
import hashlib
import io
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


def _squad_records(payload: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """Flatten the official nested SQuAD format (v1.1 and v2.0) into one record per question."""
    records = []
    try:
        for article in payload["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    answers = qa.get("answers", [])
                    records.append({"id": str(qa["id"]), "title": article.get("title", ""),
                                    "context": paragraph["context"], "question": qa["question"],
                                    "answers": {"text": [a["text"] for a in answers],
                                                "answer_start": [_answer_start(a["answer_start"], qa, path)
                                                                 for a in answers]}})
    except (KeyError, TypeError) as err:
        raise UserError(f"data file {path}: not the SQuAD format (an entry lacks {err}); each article needs "
                        f"paragraphs, each paragraph context and qas, each qa id, question and answers") from None
    return records


def _answer_start(value: Any, qa: dict[str, Any], path: Path) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise UserError(f"data file {path}: question {qa.get('id')!r} has answer_start={value!r}, not an integer "
                    f"character offset; fix the file")


def _is_nested_squad(payload: Any) -> bool:
    return (isinstance(payload, dict) and isinstance(payload.get("data"), list) and payload["data"]
            and isinstance(payload["data"][0], dict) and "paragraphs" in payload["data"][0])


def _load_json(path: Path) -> datasets.Dataset:
    try:
        payload = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        if _looks_like_json_lines(path):  # JSON lines saved with a .json suffix
            return _load_with_datasets("json", path)
        raise UserError(f"data file {path} is not valid JSON: {err.msg} at line {err.lineno}") from None
    _check_encodable(payload, path)
    if _is_nested_squad(payload):
        return datasets.Dataset.from_list(_squad_records(payload, path))
    if isinstance(payload, dict) and isinstance(payload.get("data"), list):
        payload = payload["data"]
    if not isinstance(payload, list) or not all(isinstance(r, dict) for r in payload):
        raise UserError(f"data file {path}: expected the SQuAD nested format, a list of records, "
                        f"or {{\"data\": [records]}}")
    return datasets.Dataset.from_list(payload)


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"data file {path} is not UTF-8 text (byte {err.start}); convert it to UTF-8") from None
    if not text.strip():
        raise UserError(f"data file {path} is empty; give a file with examples")
    return text


def _looks_like_json_lines(path: Path) -> bool:
    first = next((line for line in _read_text(path).splitlines() if line.strip()), "")
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _check_encodable(payload: Any, path: Path) -> None:
    """JSON escapes can hold a lone surrogate (half of a UTF-16 pair), which no tokenizer or Arrow
    column accepts: name the place instead of failing deep inside the library."""
    try:
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:
        text = err.object if isinstance(err.object, str) else ""
        near = text[max(0, err.start - 30):err.start].encode("utf-8", "replace").decode()
        raise UserError(f"data file {path} holds a lone surrogate {text[err.start]!r} (after {near!r}); fix the text's "
                        f"encoding (it is half of a UTF-16 pair)") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _load_with_datasets(builder: str, path: Path, **kwargs: Any) -> datasets.Dataset:
    library_log = logging.getLogger("datasets")
    level, library_log.level = library_log.level, logging.CRITICAL  # it logs the error we report in one line
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as err:  # datasets raises many types for malformed files
        raise UserError(f"data file {path} could not be read as {builder}: {_first_line(err)}") from None
    finally:
        library_log.setLevel(level)


def _check_table(path: Path, delimiter: str, quoting: int) -> None:
    """Empty, header-only and ragged CSV/TSV files, named with the line, before datasets' generic error."""
    rows = csv.reader(io.StringIO(_read_text(path)), delimiter=delimiter, quoting=quoting)
    header = next(rows, None)
    count = 0
    for count, row in enumerate(rows, start=1):
        if row and len(row) != len(header):
            raise UserError(f"data file {path}: row {count} has {len(row)} fields but the header has {len(header)} "
                            f"({delimiter!r}-separated); fix that row (an unquoted {delimiter!r} in a text?)")
    if count == 0:
        raise UserError(f"data file {path} has a header but no rows")


def _load_table(path: Path, delimiter: str) -> datasets.Dataset:
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    _check_table(path, delimiter, quoting)
    extra = {"delimiter": delimiter, "quoting": quoting} if delimiter == "\t" else {}
    return _load_with_datasets("csv", path, **extra, **TEXT_TABLE)


# Only empty cells are missing: pandas' default also reads the words "null", "NA", "nan" ... as missing,
# and those are text in sentence data. (A byte-order mark before the header is dropped by the reader.)
TEXT_TABLE = {"keep_default_na": False, "na_values": [""]}

LOCAL_READERS: dict[str, Callable[[Path], datasets.Dataset]] = {
    "squad": _load_json,
    "json": _load_json,
    "jsonl": lambda p: _load_with_datasets("json", p),
    "csv": lambda p: _load_table(p, ","),
    "tsv": lambda p: _load_table(p, "\t"),
    "parquet": lambda p: _load_with_datasets("parquet", p),
}


def register_reader(fmt: str, reader: Callable[[Path], datasets.Dataset], *suffixes: str) -> None:
    """Let a task module add a file format (e.g. CoNLL) without editing this module."""
    LOCAL_READERS[fmt] = reader
    for suffix in suffixes:
        SUFFIX_FORMATS[suffix] = fmt


def _load_local(config: DataConfig) -> tuple[datasets.Dataset, str]:
    path = resolve_path(config.path)
    if path.is_dir():
        raise UserError(f"data.path={config.path} is a directory; give a data file (a dataset directory with split "
                        f"files loads with data.name={config.path} data.path=null)")
    if not path.is_file():
        raise UserError(f"data.path={config.path}: no such file ({path})")
    if config.format != "auto" and config.format not in LOCAL_READERS:
        raise UserError(f"data.format={config.format} is not a known format; use auto or one of: "
                        f"{', '.join(sorted(LOCAL_READERS))}")
    if path.stat().st_size == 0:
        raise UserError(f"data file {path} is empty; give a file with examples")
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
