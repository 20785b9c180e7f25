"""Small file helpers: atomic writes and content hashes.

One implementation serves both packages (``pathways_kg.io``; ``pathways_kg`` must not import
``histokg``). ``atomic_path`` yields a temporary path beside the target that replaces it only when
the block succeeds (fsync'd, usual permissions): readers never see a half-written file, and a crash
leaves the previous version intact.
"""

from pathways_kg.io import atomic_open, atomic_path, file_sha256, write_json

__all__ = ["atomic_open", "atomic_path", "file_sha256", "write_json"]
