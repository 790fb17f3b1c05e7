"""Write the dashboards' JSON into deploy/dashboards/json/, or check it is current.

python -m deploy.dashboards.generate          # regenerate
python -m deploy.dashboards.generate --check  # exit 1 when the committed JSON differs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deploy.dashboards.backends import CANARY, DATA_PATH, TENANTS
from deploy.dashboards.build import to_json
from deploy.dashboards.overview import OVERVIEW
from deploy.dashboards.service import WORKERS
from deploy.dashboards.spec import Dashboard

JSON_DIR = Path(__file__).resolve().parent / "json"
DASHBOARDS: tuple[Dashboard, ...] = (OVERVIEW, WORKERS, DATA_PATH, TENANTS, CANARY)


def path_of(spec: Dashboard) -> Path:
    return JSON_DIR / f"{spec.uid}.json"


def stale() -> list[Path]:
    """Committed files that differ from what the generator makes now (or are missing)."""
    return [
        path_of(spec)
        for spec in DASHBOARDS
        if not path_of(spec).exists() or path_of(spec).read_text() != to_json(spec)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    if args.check:
        differing = stale()
        for path in differing:
            print(f"{path} differs from the generator: run python -m deploy.dashboards.generate")
        return 1 if differing else 0
    JSON_DIR.mkdir(exist_ok=True)
    for spec in DASHBOARDS:
        path_of(spec).write_text(to_json(spec))
        print(f"wrote {path_of(spec)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
