"""Handing start-up code back to the kernel (`memory.release_code_pages`): the resident pages of
read-only file mappings are reclaimed and read back intact; writable mappings keep theirs."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pibloom.engine.memory import release_code_pages

SIZE = 4 << 20


def resident_kb(path: Path) -> int:
    """Resident kB of this process's mappings of `path`."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if "-" in fields[0] and len(fields) >= 5 and ":" not in fields[0]:
            inside = len(fields) == 6 and fields[5] == str(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


@contextmanager
def mapped(path: Path, data: bytes, *, writable: bool) -> Iterator[mmap.mmap]:
    """`data` in a file whose pages are clean (written back), mapped as a library's are: private and
    read-only, or shared and writable (as prometheus' multiprocess files are)."""
    with path.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())  # dirty page-cache pages are not reclaimed until written back
    with path.open("r+b" if writable else "rb") as file:
        shared = (mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        flags, prot = shared if writable else (mmap.MAP_PRIVATE, mmap.PROT_READ)
        with mmap.mmap(file.fileno(), 0, flags=flags, prot=prot) as view:
            yield view


def test_read_only_file_pages_are_reclaimed_and_read_back(tmp_path: Path) -> None:
    data = os.urandom(SIZE)
    path = tmp_path / "library.so"
    with mapped(path, data, writable=False) as view:
        assert view[:] == data  # every page faulted in
        assert resident_kb(path) >= SIZE >> 10

        assert release_code_pages() >= SIZE

        assert resident_kb(path) < (SIZE >> 10) // 4
        assert view[:] == data  # read back from the file, as it was
        assert resident_kb(path) >= SIZE >> 10


def test_writable_mappings_keep_their_pages(tmp_path: Path) -> None:
    # Clean shared pages are reclaimable, so only the writable-mapping rule keeps them resident.
    data = os.urandom(SIZE)
    path = tmp_path / "metrics.db"
    with mapped(path, data, writable=True) as view:
        assert view[:] == data
        before = resident_kb(path)
        assert before >= SIZE >> 10

        release_code_pages()

        assert resident_kb(path) == before


def test_nothing_is_advised_without_proc_maps(tmp_path: Path) -> None:
    assert release_code_pages(tmp_path / "absent") == 0
