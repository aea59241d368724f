"""The ``lockstep`` command: ``token new|list|revoke`` manage the tokens file; ``backup``,
``export`` and ``import`` (``app.backup``) copy the database."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from app import backup
from app.settings import InvalidSettings, load_settings
from app.tokens import (
    SCOPES,
    TokenEntry,
    TokensFileError,
    add_token,
    read_tokens,
    revoke_token,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lockstep", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="manage bearer tokens")
    token.add_argument(
        "--file",
        type=Path,
        help="tokens file (default: $LOCKSTEP_TOKENS_FILE)",
    )
    actions = token.add_subparsers(dest="action", required=True)
    new = actions.add_parser("new", help="create a token; it is printed once, only its hash kept")
    new.add_argument("--scope", choices=SCOPES, required=True)
    new.add_argument("--label", required=True, help="a unique name to list and revoke it by")
    actions.add_parser("list", help="list labels and scopes (tokens cannot be shown)")
    revoke = actions.add_parser("revoke", help="remove the token stored under LABEL")
    revoke.add_argument("label")
    backup.add_commands(commands)
    return parser


def _print_tokens(tokens: Sequence[TokenEntry]) -> None:
    """One aligned line per token under a header; the header alone when there are none."""
    rows = [("LABEL", "SCOPE", "CREATED_AT")] + [(t.label, t.scope, t.created_at) for t in tokens]
    label_width = max(len(label) for label, _, _ in rows)
    scope_width = max(len(scope) for _, scope, _ in rows)
    for label, scope, created_at in rows:
        print(f"{label:<{label_width}}  {scope:<{scope_width}}  {created_at}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except InvalidSettings as e:
        print(f"lockstep: {e}", file=sys.stderr)
        return 1
    if args.command != "token":
        return backup.run(args, settings)
    path: Path | None = args.file or settings.tokens_file
    if path is None:
        parser.error("no tokens file: pass --file or set LOCKSTEP_TOKENS_FILE")
    try:
        if args.action == "new":
            print(add_token(path, args.label, args.scope))
        elif args.action == "list":
            _print_tokens(read_tokens(path).tokens if path.exists() else [])
        elif revoke_token(path, args.label):
            print(f"revoked token {args.label!r}")
        else:
            print(f"lockstep: no token labelled {args.label!r}", file=sys.stderr)
            return 1
    except TokensFileError as e:
        print(f"lockstep: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
