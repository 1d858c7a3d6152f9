"""The `kocoon` command: one entry point for every process Kocoon runs.

Each subcommand lives in its own module and is imported only when chosen, so
`kocoon router` never pays for the operator's imports and the reverse.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line help). Each module exposes `main(argv) -> int`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("kocoon.controllers.main", "run the operator (kopf) against the current cluster"),
    "router": ("kocoon.router.main", "run the router: the data path into sessions and models"),
    "agent": ("kocoon.agent.main", "run the node agent: checkpoint, store and restore"),
    "dev": ("kocoon.devcluster.cli", "local cluster for development: up, down, status, env"),
    "crds": ("kocoon.crds", "generate the CustomResourceDefinitions from the API models"),
}


def usage() -> str:
    lines = ["usage: kocoon <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {helptext}" for name, (_, helptext) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in SUBCOMMANDS:
        print(f"kocoon: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[command][0])
    result: int = module.main(rest)
    return result


if __name__ == "__main__":
    sys.exit(main())
