"""API keys for the service: ``python3 -m jobs.api_keys new web --scopes score,explain,write --env .env``.

    new ID --scopes S[,S…] [--file F | --env F]   make a key; print it once; store only its entry
    revoke ID (--file F | --env F)                remove a key's entry
    list (--file F | --env F)                     the ids and scopes of the entries

``--file`` is a key file (``DIN_API_KEYS_FILE``, one entry a line; the service re-reads it within a
second, so a new or revoked key takes effect without a restart). ``--env`` is a compose ``.env``
file whose ``DIN_API_KEYS`` line is updated (the service reads it at start). Both are written
mode 0600. The key itself is printed once and stored nowhere: give it to the client. Runs on the
standard library alone (no install needed), from the repository's root.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from contracts.api_keys import SCOPES, KeyEntry, new_key, parse_entries
from contracts.cli import Parser

ENV_VAR = "DIN_API_KEYS"
_ENV_LINE = re.compile(rf"^\s*(?:export\s+)?{ENV_VAR}\s*=\s*(.*)$")


def read_entries(file: Path | None, env: Path | None) -> dict[str, KeyEntry]:
    if file is not None:
        return parse_entries(file.read_text()) if file.exists() else {}
    assert env is not None
    if not env.exists():
        return {}
    for line in env.read_text().splitlines():
        if m := _ENV_LINE.match(line):
            return parse_entries(m.group(1).strip().strip("'\""))
    return {}


def write_entries(entries: dict[str, KeyEntry], file: Path | None, env: Path | None) -> None:
    lines = [e.line() for e in entries.values()]
    if file is not None:
        text = "# API key entries: <id> <scopes> <sha256 of the key> (python3 -m jobs.api_keys)\n"
        _write(file, text + "".join(f"{line}\n" for line in lines))
        return
    assert env is not None
    kept = [
        line for line in (env.read_text().splitlines() if env.exists() else []) if not _ENV_LINE.match(line)
    ]
    _write(env, "\n".join([*kept, f"{ENV_VAR}='{';'.join(lines)}'"]) + "\n")


def _write(path: Path, text: str) -> None:
    """Atomically, readable by its owner alone."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python3 -m jobs.api_keys", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    commands = {
        "new": sub.add_parser("new", help="make a key and store its entry"),
        "revoke": sub.add_parser("revoke", help="remove a key's entry"),
        "list": sub.add_parser("list", help="the entries' ids and scopes"),
    }
    for name, c in commands.items():
        if name != "list":
            c.add_argument("id", help="the key's name: 1 to 40 letters, digits, '_' or '-'")
        where = c.add_mutually_exclusive_group(required=name != "new")
        where.add_argument("--file", type=Path, help="a key file (DIN_API_KEYS_FILE)")
        where.add_argument("--env", type=Path, help="a compose .env file (its DIN_API_KEYS line)")
    commands["new"].add_argument("--scopes", required=True, help=f"comma-separated: {', '.join(SCOPES)}")
    a = p.parse_args(argv)
    try:
        entries = read_entries(a.file, a.env) if a.file or a.env else {}
    except (OSError, ValueError) as e:
        p.error(f"{a.file or a.env}: {e}")
    if a.command == "list":
        for entry in entries.values():
            print(f"{entry.id}\t{','.join(sorted(entry.scopes))}")
        return 0
    if a.command == "revoke":
        if a.id not in entries:
            p.error(f"no key named {a.id} in {a.file or a.env}")
        del entries[a.id]
        write_entries(entries, a.file, a.env)
        print(f"revoked {a.id}", file=sys.stderr)
        return 0
    if a.id in entries:
        p.error(f"a key named {a.id} exists: revoke it first, or give the new one another name (rotation)")
    try:
        key, entry = new_key(a.id, {s.strip() for s in a.scopes.split(",") if s.strip()})
    except ValueError as e:
        p.error(str(e))
    if a.file or a.env:
        write_entries(entries | {entry.id: entry}, a.file, a.env)
        print(
            f"entry stored in {a.file or a.env}; the key (shown once, give it to the client):",
            file=sys.stderr,
        )
    else:
        print(f"entry (for DIN_API_KEYS or a key file): {entry.line()}", file=sys.stderr)
        print("the key (shown once, give it to the client):", file=sys.stderr)
    print(key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
