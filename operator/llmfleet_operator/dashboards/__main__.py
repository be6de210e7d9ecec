"""Write the dashboards' JSON: ``python -m llmfleet_operator.dashboards --out DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path

from llmfleet_operator.dashboards import render_all


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmfleet_operator.dashboards")
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    wanted = render_all()
    for stale in out.glob("*.json"):
        if stale.name not in wanted:
            stale.unlink()
    for name, text in wanted.items():
        (out / name).write_text(text)
        print(out / name)


if __name__ == "__main__":
    main()
