"""Checkpoint drivers: one module per mechanism, one interface (`base.Driver`)."""
