"""The episode store: durable, deduplicated attempts on disk, in a format pandas reads.

writer.py (`Store`: append with group commit, roll), recovery.py (the lock and what opening
finds after a crash), wal.py (the write-ahead log), shards.py (immutable Parquet shards),
reader.py (`StoreReader`: sampling and reading back), counters.py (per-robot counts),
types.py (config, results, errors), durable.py (crash-safe writes, used by all of fleet).
docs/store.md is the layout.
May import: fleet.wire.
"""
