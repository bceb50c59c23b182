"""Writes the stack as CloudFormation creates it, as JSON: `Fn::ForEach` loops expanded, lookups of literal
keys in `Mappings` resolved and the monitoring application inlined (`metering_tools.template`). checkov reads
SAM templates but not their loops, so `make lint` scans this file: every resource of the stack in one file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from metering_tools.template import LANGUAGE_EXTENSIONS, load_template, transforms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output", type=Path, help="where to write the template (JSON)")
    output: Path = parser.parse_args().output
    template = load_template()
    template["Transform"] = [name for name in transforms(template) if name != LANGUAGE_EXTENSIONS]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(template, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
