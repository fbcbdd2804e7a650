"""Is a dedup.tsv written from hashes in the details (before issue 24 item 4) the same as one
written from hashes files, once the hash keys are taken out of its rows?

    python bench/same_without_hashes.py OLD_DEDUP_TSV NEW_DEDUP_TSV

(e.g. `bench_gathers.py --layout details --old-repo <checkout>` and `bench_gathers.py` over
the same synthetic rows: their `dedup-before.tsv` and `dedup-after.tsv`). Prints True when
the old file's rows without `<method>`, `<method>_mirror`, `<method>_trims` (also under
`source`) give the new file's bytes.
"""
from __future__ import annotations

import sys

from common import REPO

sys.path.insert(0, str(REPO))
from pipeline.manifest import ENCODING, ERRORS, Row, iter_manifest, manifest_lines  # noqa: E402

HASH_KEYS = ("phash", "dhash", "whash")


def without_hashes(details: dict) -> dict:
    out = {k: v for k, v in details.items() if not k.startswith(HASH_KEYS)}
    if isinstance(out.get("source"), dict):
        out["source"] = without_hashes(out["source"])
    return out


def main() -> None:
    old, new = sys.argv[1], sys.argv[2]
    rows = (Row(r.id, r.source, r.parent_id, r.path, r.width, r.height, r.action, r.reason,
                without_hashes(r.details)) for r in iter_manifest(old))
    text = "".join(manifest_lines(rows)).encode(ENCODING, ERRORS)
    other = open(new, "rb").read()
    print(f"same without hashes: {text == other} ({len(text)} and {len(other)} bytes)")


if __name__ == "__main__":
    main()
