"""What the three benchmark readers share: optional packages, required fields, UTF-8 text, item fingerprints.

Run: no entry point; tests are `python -m pytest tests/test_eval.py -q`.
"""
import hashlib
import importlib
import json
from pathlib import Path


def require(module: str, package: str, why: str):
    """Import an optional package, or an ImportError saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{why} needs {package}: pip install -r requirements.txt (or pip install {package})"
                          ) from None


def need(row: dict, fields, where: str):
    """ValueError naming `where` unless `row` is an object holding every field, none null."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a JSON {type(row).__name__}, not an object with the fields {', '.join(fields)}")
    for f in fields:
        if f not in row:
            raise ValueError(f"{where}: missing field {f!r} (has: {', '.join(map(str, row))})")
        if row[f] is None:
            raise ValueError(f"{where}: field {f!r} is null")


def read_text(path: Path) -> str:
    """A JSON / JSONL file's text. JSON is UTF-8 whatever the locale; other bytes are a ValueError naming the
    file, its line and the fix."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: byte 0x{raw[e.start]:02x} is not UTF-8 (JSON files are UTF-8); "
                         f"re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def read_json_list(path: Path, fix: str, what: str = "questions") -> list:
    """A released JSON file holding a list (of questions or entries) -> that list; a file that is not JSON, or holds
    something else, is a ValueError naming it and `fix`."""
    try:
        rows = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e}); {fix}") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: a JSON {type(rows).__name__}, not the released list of {what}")
    return rows


def item_hash(item: dict) -> str:
    """A fingerprint of what an item asks and expects (prompt and answer): a resume reuses an answer only for
    the same question."""
    text = json.dumps([item["prompt"], item["answer"]], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
