"""The few Kubernetes API helpers every part of Kocoon uses: client, paths, apply, patch."""
