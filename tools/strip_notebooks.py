"""Strip outputs, execution counts and widget state from notebooks before committing them.

    python tools/strip_notebooks.py                 # every notebooks/*.ipynb
    python tools/strip_notebooks.py a.ipynb b.ipynb # these files
    python tools/strip_notebooks.py --check         # exit 1 (listing them) if any notebook has outputs

An executed notebook with a live dashboard holds megabytes of widget state; git keeps the
sources only, and CI executes them (tests/test_notebooks.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Notebook-level metadata worth keeping; everything else (widget state, kernel run info) is dropped.
KEEP_METADATA = ("kernelspec", "language_info")


def strip(nb: dict) -> dict:
    """The notebook without outputs, execution counts, cell ids' run metadata or widget state."""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k in ("tags",)}
    meta = nb.get("metadata", {})
    nb["metadata"] = {k: meta[k] for k in KEEP_METADATA if k in meta}
    if "language_info" in nb["metadata"]:
        nb["metadata"]["language_info"] = {"name": nb["metadata"]["language_info"].get("name", "python")}
    return nb


def dumps(nb: dict) -> str:
    # The layout Jupyter itself writes (indent 1, sorted keys, trailing newline): no diff noise on re-save.
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/*.ipynb)")
    parser.add_argument("--check", action="store_true", help="only report notebooks that are not stripped")
    args = parser.parse_args(argv)
    paths = args.paths or sorted((ROOT / "notebooks").glob("*.ipynb"))
    dirty = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
            nb = json.loads(text)
        except (OSError, json.JSONDecodeError) as e:
            print(f"{path}: cannot read the notebook: {e}", file=sys.stderr)
            return 2
        clean = dumps(strip(nb))
        if clean != text:
            dirty.append(path)
            if not args.check:
                path.write_text(clean, encoding="utf-8")
    verb = "not stripped" if args.check else "stripped"
    for path in dirty:
        print(f"{verb}: {path}")
    return 1 if (args.check and dirty) else 0


if __name__ == "__main__":
    sys.exit(main())
