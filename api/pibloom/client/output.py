"""The results file: JSONL, one line per finished item, appended and flushed as each finishes.

Because every line is written whole and flushed at once, stopping the run at any moment (Ctrl-C, a
kill) leaves a file of complete lines; at worst a hard kill mid-write leaves a torn last line, which
the next run drops. Re-running with the same file skips the ids it already holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from .models import ResultRow, Row, id_key
from .openai_batch import result_line


class OutputFileError(ValueError):
    """The existing results file cannot be resumed safely."""


class ResultWriter:
    def __init__(self, path: str | Path, *, json_mode: bool = False, openai_batch: bool = False) -> None:
        self.path = Path(path)
        self.json_mode = json_mode
        self.openai_batch = openai_batch  # OpenAI's Batch output lines (keyed by custom_id)
        self.written = 0
        self._file: IO[str] | None = None

    def _read_rows(self) -> tuple[list[tuple[bytes, dict[str, Any]]], bool]:
        """The complete rows of the existing file and whether its last line was torn."""
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        rows: list[tuple[bytes, dict[str, Any]]] = []
        torn = False
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            last = index == len(lines) - 1  # no newline after it: the write may not have finished
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                if last:
                    torn = True
                    continue
                raise OutputFileError(
                    f"{self.path}:{index + 1} is not valid JSON; fix or remove that line to resume"
                ) from exc
            if not isinstance(row, dict) or "id" not in row:
                raise OutputFileError(f"{self.path}:{index + 1} is not a result row (no 'id')")
            if "custom_id" in row:
                row["id"] = row["custom_id"]  # an OpenAI Batch output line: items are keyed by custom_id
            if last:
                torn = True  # complete JSON but no newline: rewrite it with one
            rows.append((line, row))
        return rows, torn

    def resume(self, *, retry_failed: bool = True) -> set[str]:
        """Ids to skip because the file already holds them; failed rows are dropped (to be retried)
        unless `retry_failed` is off, in which case they are kept and skipped too."""
        if not self.path.exists():
            return set()
        rows, torn = self._read_rows()
        done = {id_key(row["id"]) for _, row in rows if row.get("error") is None}
        failed = {id_key(row["id"]) for _, row in rows if row.get("error") is not None} - done
        keep = [line for line, row in rows if row.get("error") is None or not retry_failed]
        if torn or (retry_failed and failed):
            self._replace([line + b"\n" for line in keep])
        return done if retry_failed else done | failed

    def _replace(self, lines: list[bytes]) -> None:
        """Rewrite the file atomically, so an interruption here cannot lose what was done."""
        fd, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.writelines(lines)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def open(self) -> ResultWriter:
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        return self

    def write(self, row: Row) -> None:
        if self._file is None:
            self.open()
        assert self._file is not None
        if self.openai_batch and isinstance(row, ResultRow):
            self._file.write(result_line(row))
        else:
            self._file.write(row.to_json_line(json_mode=self.json_mode))
        self._file.flush()
        self.written += 1

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def __enter__(self) -> ResultWriter:
        return self.open()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
