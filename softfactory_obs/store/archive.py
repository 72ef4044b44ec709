"""The archive file: what compaction keeps of dead workers (their summed counts), and the shards
it has absorbed.

Format: a first line ``SFOARCHIVE <generation>`` (so a reader can tell in one short read whether
its cached copy is current: inode numbers are reused and file times are coarse), then one JSON
object. Only ``store.directory`` reads and publishes it, under its locks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .shard import CorruptShardError, Key

ARCHIVE = "archive.json"
ARCHIVE_VERSION = 1
ARCHIVE_MAGIC = "SFOARCHIVE"


@dataclass
class Archive:
    """What compaction keeps of dead workers: their summed counts and the shards already absorbed."""

    generation: int = 0
    absorbed: list[str] = field(default_factory=list)
    metas: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts: dict[Key, int] = field(default_factory=dict)

    @staticmethod
    def generation_of(path: str) -> int | None:
        """The generation in the archive's first line (one short read), or None without an archive."""
        try:
            with open(path, "rb") as f:
                header = f.readline(64).split()
        except FileNotFoundError:
            return None
        if len(header) != 2 or header[0] != ARCHIVE_MAGIC.encode() or not header[1].isdigit():
            raise CorruptShardError(f"{path}: not an archive header: {b' '.join(header)!r}")
        return int(header[1])

    @classmethod
    def load(cls, path: str) -> Archive:
        """The archive at ``path`` (empty when there is none)."""
        try:
            with open(path, "rb") as f:
                f.readline()  # the generation header
                data = json.load(f)
        except FileNotFoundError:
            return cls()
        if data.get("version") != ARCHIVE_VERSION:
            raise CorruptShardError(f"{path}: unknown archive version {data.get('version')!r}")
        counts = {(n, s, tuple(lv)): int(v) for n, s, lv, v in data["counts"]}
        return cls(int(data["generation"]), list(data["absorbed"]), dict(data["metas"]), counts)

    def dump(self) -> bytes:
        """The archive as stored: a header line with the generation, then the JSON."""
        return (
            f"{ARCHIVE_MAGIC} {self.generation}\n".encode()
            + json.dumps(
                {
                    "version": ARCHIVE_VERSION,
                    "generation": self.generation,
                    "absorbed": self.absorbed,
                    "metas": self.metas,
                    "counts": [[n, s, list(lv), v] for (n, s, lv), v in sorted(self.counts.items())],
                },
                separators=(",", ":"),
            ).encode()
        )
