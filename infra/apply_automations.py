"""Create the Prefect automations described in infra/automations/*.yaml on the server at
PREFECT_API_URL, replacing any of the same name, so that running it again leaves one of each.

    python infra/apply_automations.py [FOLDER]

Used by ``infra/stack.sh up``; on a team's server run it once with PREFECT_API_URL set."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from prefect.client.orchestration import get_client
from prefect.events.schemas.automations import AutomationCore

FOLDER = Path(__file__).resolve().parent / "automations"


def apply(folder: Path = FOLDER) -> list[str]:
    """Replace-or-create each automation in ``folder``; returns the names applied."""
    specs = [AutomationCore.model_validate(yaml.safe_load(f.read_text())) for f in sorted(folder.glob("*.yaml"))]
    with get_client(sync_client=True) as client:
        for spec in specs:
            for old in client.read_automations_by_name(spec.name):
                client.delete_automation(old.id)
            client.create_automation(spec)
    return [s.name for s in specs]


if __name__ == "__main__":
    for name in apply(Path(sys.argv[1]) if len(sys.argv) > 1 else FOLDER):
        print(f"automation {name}: applied")
