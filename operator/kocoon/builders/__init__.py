"""Pure builders: a typed Sandbox plus the operator's settings → the manifests of its children.

No I/O here: every function returns plain dicts ready for server-side apply, so the shape of
every child is tested as data.
"""
