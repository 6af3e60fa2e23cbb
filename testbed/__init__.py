"""vnet-testbed package."""
