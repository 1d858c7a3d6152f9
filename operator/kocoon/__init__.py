"""Kocoon: a Kubernetes runtime for AI agent sessions and models."""
