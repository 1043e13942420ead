#!/usr/bin/env python3
"""Render docs/options.md from the module options (tests/nix/options-doc.nix).

    python3 tests/nix/render_options.py            # rewrite docs/options.md
    python3 tests/nix/render_options.py --check    # exit 1 if docs/options.md is stale

The option data comes from `nix-instantiate` with nixpkgs' lib from $CIM_NIXPKGS_LIB
(or <nixpkgs>), or from a JSON file (--json, as the flake's check does).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "options.md"

HEADER = """\
# NixOS options: `services.cim`

Generated from the modules by `python3 tests/nix/render_options.py`; do not edit by hand
(`tests/test_nix_eval.py` fails when this file is stale).

"""


def option_data() -> list[dict]:
    lib = os.environ.get("CIM_NIXPKGS_LIB")
    arg = ["--arg", "lib", f"import {lib}" if lib else "import <nixpkgs/lib>"]
    out = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", *arg, str(ROOT / "tests/nix/options-doc.nix")],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)


def value(v) -> str:
    if isinstance(v, dict) and v.get("_type") == "literalExpression":
        text = v["text"].rstrip("\n")
        return f"\n\n```nix\n{text}\n```" if "\n" in text else f" `{text}`"
    if isinstance(v, dict) and v.get("_type") == "literalMD":
        return " " + v["text"].strip()
    return f" `{json.dumps(v)}`"


def render(options: list[dict]) -> str:
    parts = [HEADER]
    for opt in sorted(options, key=lambda o: o["name"]):
        parts.append(f"## `{opt['name']}`\n\n{opt['description'].strip()}\n\n")
        parts.append(f"*Type:* {opt['type']}" + (" (read-only)" if opt.get("readOnly") else "") + "\n\n")
        if opt.get("default") is not None:
            parts.append(f"*Default:*{value(opt['default'])}\n\n")
        if opt.get("example") is not None:
            parts.append(f"*Example:*{value(opt['example'])}\n\n")
        decl = ", ".join(f"[modules/{d}](../modules/{d})" for d in opt["declarations"])
        parts.append(f"*Declared in:* {decl}\n\n")
    return "".join(parts).rstrip("\n") + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="option data (from options-doc.nix) instead of running nix-instantiate")
    ap.add_argument("--check", nargs="?", const=DOC, type=Path, metavar="FILE", help="compare with FILE (default docs/options.md)")
    ap.add_argument("--output", type=Path, default=DOC, help="where to write (default docs/options.md)")
    args = ap.parse_args()
    data = json.loads(args.json.read_text()) if args.json else option_data()
    text = render(data)
    if args.check:
        if args.check.read_text() != text:
            print(f"{args.check} is stale: run `python3 tests/nix/render_options.py` and commit it", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
