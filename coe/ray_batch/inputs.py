"""A batch's input as rows of a Ray dataset: OpenAI batch JSONL or Parquet, local or on
shared storage (anything pyarrow's filesystems reach: s3://, gs://, hdfs://).

Each file is read by one task and numbered there; a first, cheap pass counts each file's
requests so every line gets its global index, the same index the Redis engine gives the
same file (blank lines skipped). Lines are checked as the Redis engine checks them
(`coe.batch.wire`), and a `custom_id` seen before is an error on every later line, found
with one grouping over the ids (no process holds them all).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from coe.batch.lines import bad_line
from coe.batch.wire import ParsedLine, parse_line
from coe.errors import InvalidRequest

if TYPE_CHECKING:
    import ray.data

PARQUET = (".parquet", ".pq")
# One row per line through every stage: scalars only, so Arrow never has to unify shapes.
# `result` is the line's finished output line (JSON) once it has one; `body` the request.
Row = dict[str, Any]


def is_parquet(path: str) -> bool:
    return path.lower().endswith(PARQUET)


def requests_in(content: bytes, path: str) -> list[str]:
    """A file's requests as JSON texts, in order: JSONL's non-empty lines, or Parquet's rows
    (a `body` column may hold JSON text or a struct; a struct's absent fields are dropped)."""
    if is_parquet(path):
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(content))
        return [json.dumps(_request_row(row)) for row in table.to_pylist()]
    text = content.decode("utf-8", errors="replace")
    return [line for line in text.splitlines() if line.strip()]


def _request_row(row: dict[str, Any]) -> dict[str, Any]:
    body = row.get("body")
    if isinstance(body, str):
        try:
            row["body"] = json.loads(body)
        except ValueError:
            pass  # left as text: the line check says what is wrong with it
    elif isinstance(body, dict):
        row["body"] = _without_nulls(body)
    return {k: v for k, v in row.items() if v is not None}


def _without_nulls(value: Any) -> Any:
    """A Parquet struct holds every field any row has: the ones a row lacks read as null."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def count_requests(row: Row) -> Row:
    """The first pass: how many requests a file holds, and how many are JSON objects."""
    requests = requests_in(row["bytes"], row["path"])
    objects = sum(1 for raw in requests if raw.lstrip().startswith("{") and _is_object(raw))
    return {"path": row["path"], "n": len(requests), "objects": objects}


def _is_object(raw: str) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except ValueError:
        return False


def offsets(counts: Sequence[Mapping[str, Any]], order: Sequence[str]) -> dict[str, int]:
    """Each file's first global index, files in the order given."""
    by_path = {str(c["path"]): int(c["n"]) for c in counts}
    out, at = {}, 0
    for path in order:
        out[path] = at
        at += by_path.get(path, 0)
    return out


def split_file(row: Row, job_id: str, first: Mapping[str, int]) -> Iterator[Row]:
    """The second pass: a file's requests as checked rows with their global index."""
    base = first[row["path"]]
    for offset, raw in enumerate(requests_in(row["bytes"], row["path"])):
        yield checked(job_id, base + offset, raw)


def checked(job_id: str, index: int, raw: str) -> Row:
    """One line, checked as the Redis engine checks it; a bad line carries its error line.
    `claims`: the line holds its custom_id (the duplicate check's)."""
    line = parse_line(index, raw, set())
    return {
        "index": index,
        "custom_id": line.custom_id,
        "claims": line.has_id,
        "body": "" if line.body is None else json.dumps(line.body),
        "result": "" if line.body is not None else json.dumps(bad_line(job_id, line)),
    }


def mark_duplicates(row: Row, job_id: str, first_of: Mapping[str, int]) -> Row:
    """A line whose custom_id an earlier line holds is an error, whatever else it says."""
    first = first_of.get(row["custom_id"])
    if row["claims"] and first is not None and first != row["index"]:
        message = f"duplicate custom_id {row['custom_id']!r}"
        line = ParsedLine(row["index"], row["custom_id"], None, message, has_id=True)
        return {**row, "body": "", "result": json.dumps(bad_line(job_id, line))}
    return row


def read_lines(ds_files: ray.data.Dataset, paths: Sequence[str], job_id: str) -> ray.data.Dataset:
    """Checked, globally indexed lines of the files `ds_files` reads (as read_binary_files
    with `include_paths`), duplicates marked."""
    counts = ds_files.map(count_requests).take_all()
    if not any(int(c["n"]) for c in counts):
        raise InvalidRequest("batch input has no requests")
    order = _ordered(paths, [str(c["path"]) for c in counts])
    first = offsets(counts, order)
    lines = ds_files.flat_map(
        split_file,  # type: ignore[arg-type]  # its keyword arguments come in fn_kwargs
        fn_kwargs={"job_id": job_id, "first": first},
    )
    if not any(int(c["objects"]) for c in counts):
        raise InvalidRequest("batch input is not JSONL: no line is a JSON object")
    lines = lines.materialize()
    dupes = (
        lines.filter(lambda r: bool(r["claims"]))
        .groupby("custom_id")
        .aggregate(_Count(), _MinIndex())
        .filter(lambda r: r["count()"] > 1)
        .take_all()
    )
    if not dupes:
        return lines
    first_of = {str(d["custom_id"]): int(d["min(index)"]) for d in dupes}
    return lines.map(mark_duplicates, fn_kwargs={"job_id": job_id, "first_of": first_of})


def _ordered(given: Sequence[str], read: Sequence[str]) -> list[str]:
    """Files in the order the user gave them; a folder's files sorted by name."""
    out: list[str] = []
    for path in given:
        here = sorted(p for p in read if p == path or p.startswith(path.rstrip("/") + "/"))
        out += [p for p in here if p not in out]
    out += sorted(p for p in read if p not in out)
    return out


def _Count() -> Any:
    from ray.data.aggregate import Count

    return Count()


def _MinIndex() -> Any:
    from ray.data.aggregate import Min

    return Min("index")
