"""JSONL transport: every document appended to a file, one line each.

The file is valid JSONL after every event: each line is written with a single ``write`` and
flushed at once, so a reader tailing the file (or a crash) never sees half a document from us.
Topics are not written; the documents carry everything (session, speaker, schema).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import IO, Any

from realtime_erc.outputs.publisher import OutputError
from realtime_erc.outputs.schema import encode_document

log = logging.getLogger(__name__)


class JsonlWriter:
    """Appends documents to ``path`` (created with its parent directories if missing).

    Flushed per document (not fsynced: that would cost milliseconds per event and only matters
    for power loss, not for a crash of this process).
    """

    name = "jsonl"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.written = 0
        self._file: IO[str] | None = None

    async def start(self) -> None:
        """Open for appending. If a previous run left an unterminated last line, end it first so
        our documents start on a line of their own."""
        if self._file is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            needs_newline = _ends_without_newline(self.path)
            self._file = self.path.open("a", encoding="utf-8", newline="\n")
        except OSError as e:
            raise OutputError(
                f"cannot write the JSONL file {self.path}: {e.strerror}. "
                "Choose a writable path with --jsonl FILE"
            ) from None
        if needs_newline:
            log.warning("%s ended in a partial line; starting on a new line", self.path)
            self._file.write("\n")
            self._file.flush()
        log.info("appending documents to %s", self.path)

    async def publish(self, topic: str, document: dict[str, Any]) -> None:
        """Append ``document`` as one line (``topic`` is not written) and flush."""
        if self._file is None:
            raise RuntimeError("JsonlWriter.publish() before start()")
        line = encode_document(document) + "\n"  # encode first: a bad document writes nothing
        self._file.write(line)
        self._file.flush()
        self.written += 1

    async def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()


def _ends_without_newline(path: Path) -> bool:
    """True if ``path`` exists, is non-empty and its last byte is not ``\\n``."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            if f.tell() == 0:
                return False
            f.seek(-1, 2)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False
