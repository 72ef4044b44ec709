"""The archive file: what compaction keeps of dead workers (their summed counts), and the shards
it has absorbed.

Format: a first line ``SFOARCHIVE <generation> <nonce>``, then one JSON object. The first line is
the archive's identity, read in one short read, so a reader can tell whether its cached copy is
current (inode numbers are reused and file times are coarse). The generation counts compactions;
the nonce, random per compaction, tells apart two archives with one generation number, as after
an older archive is restored from a backup and compacted again. Only ``store.directory`` reads and
publishes it, under its locks.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from .shard import CorruptShardError, Key

ARCHIVE = "archive.json"
ARCHIVE_VERSION = 1
ARCHIVE_MAGIC = "SFOARCHIVE"

Identity = tuple[int, str]  # (generation, nonce)


def new_nonce() -> str:
    """A fresh archive nonce."""
    return os.urandom(8).hex()


@dataclass
class Archive:
    """What compaction keeps of dead workers: their summed counts and the shards already absorbed."""

    generation: int = 0
    nonce: str = ""  # "" only for the empty archive and for files written before nonces
    absorbed: list[str] = field(default_factory=list)
    metas: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts: dict[Key, int] = field(default_factory=dict)

    @property
    def identity(self) -> Identity:
        """What the first line says: (generation, nonce)."""
        return self.generation, self.nonce

    @staticmethod
    def identity_of(path: str) -> Identity | None:
        """The identity in the archive's first line (one short read), or None without an archive.
        Raises CorruptShardError for a first line that is not an archive's."""
        try:
            with open(path, "rb") as f:
                header = f.readline(80).split()
        except FileNotFoundError:
            return None
        if not 2 <= len(header) <= 3 or header[0] != ARCHIVE_MAGIC.encode() or not header[1].isdigit():
            raise CorruptShardError(f"{path}: not an archive header: {b' '.join(header)!r}")
        return int(header[1]), header[2].decode("ascii", "replace") if len(header) == 3 else ""

    @classmethod
    def load(cls, path: str) -> Archive:
        """The archive at ``path`` (empty when there is none). Raises CorruptShardError for
        anything that does not parse as one, whatever is wrong with it."""
        try:
            with open(path, "rb") as f:
                f.readline()  # the identity line
                data = json.load(f)
            if not isinstance(data, dict) or data.get("version") != ARCHIVE_VERSION:
                raise CorruptShardError(f"{path}: not an archive of version {ARCHIVE_VERSION}")
            counts = {(n, s, tuple(lv)): int(v) for n, s, lv, v in data["counts"]}
            nonce = str(data.get("nonce", ""))
            return cls(int(data["generation"]), nonce, list(data["absorbed"]), dict(data["metas"]), counts)
        except FileNotFoundError:
            return cls()
        except (ValueError, KeyError, TypeError) as exc:  # JSON, text and shape errors alike
            raise CorruptShardError(f"{path}: {type(exc).__name__}: {exc}") from exc

    def dump(self) -> bytes:
        """The archive as stored: a header line with the generation, then the JSON."""
        return (
            f"{ARCHIVE_MAGIC} {self.generation} {self.nonce}\n".encode()
            + json.dumps(
                {
                    "version": ARCHIVE_VERSION,
                    "generation": self.generation,
                    "nonce": self.nonce,
                    "absorbed": self.absorbed,
                    "metas": self.metas,
                    "counts": [[n, s, list(lv), v] for (n, s, lv), v in sorted(self.counts.items())],
                },
                separators=(",", ":"),
            ).encode()
        )
