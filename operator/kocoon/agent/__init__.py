"""The node agent: checkpoints sandboxes with a driver, keeps encrypted archives, restores them.

Runs as a privileged DaemonSet on every node and serves an authenticated HTTPS API that only
the operator calls. See `kocoon agent --help`.
"""
