"""Admission webhooks served by the operator: validation CEL cannot express, and defaults that
depend on the operator's configuration."""
