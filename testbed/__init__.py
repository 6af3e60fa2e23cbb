"""vnet-testbed package."""
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the checkout: cwd of every process the testbed starts
DEFAULT_TOPOLOGY = REPO / "topologies" / "default.yaml"
