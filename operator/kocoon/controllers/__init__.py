"""kopf handlers: thin layers that read, call the pure life cycle, act, and write status."""
