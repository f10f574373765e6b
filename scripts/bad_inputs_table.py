"""Print the table of docs/bad-inputs.md: every malformed input of the test table and the message it gets.

Runs the very cases of ``tests/test_bad_inputs.py`` (defined in
``tests/bad_input_cases.py``) through the real CLI, so the documented
messages are the ones users see. After changing a message or a case::

    python scripts/bad_inputs_table.py --write docs/bad-inputs.md   # replaces the table in the doc
    python scripts/bad_inputs_table.py                              # or just print it
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _user_errors import ArgumentParser, run  # noqa: E402
from bad_input_cases import CASES, build_workspace, command_text, run_cli, snapshot  # noqa: E402


def cell(text: str) -> str:
    """Text that stays inside one markdown table cell."""
    return text.strip().replace("|", "\\|").replace("\n", " ⏎ ")


START, END = "<!-- bad-inputs-table:start -->", "<!-- bad-inputs-table:end -->"


def table() -> str:
    """Run every case in a fresh copy of the workspace; one markdown row per case."""
    rows = [
        "| # | input | command | exit | message (stderr) | nothing written |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        template = build_workspace(Path(tmp) / "template")
        for n, case in enumerate(CASES, 1):
            root = Path(tmp) / case.id
            shutil.copytree(template, root)
            args = case.setup(root)
            before = snapshot(root)
            result = run_cli(args, root)
            message = result.stderr.replace(f"{root}/", "").replace(str(root), ".")
            untouched = "yes" if snapshot(root) == before else "**no**"
            command = cell(command_text(args))
            rows.append(f"| {n} | {cell(case.what)} | `{command}` | {result.exit_code} | {cell(message)} | {untouched} |")
    return "\n".join(rows) + "\n"


def marked_file(text: str) -> Path:
    """``--write``'s value: a file holding the table's markers, checked before the cases run."""
    path = Path(text)
    try:
        doc = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or e
        raise argparse.ArgumentTypeError(f"cannot read {text} ({why}); name the doc that holds the table") from None
    if START not in doc or END not in doc:
        raise argparse.ArgumentTypeError(f"{text} has no {START} ... {END} markers to put the table between")
    return path


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=marked_file,
                        help=f"replace the text between {START} and {END} in this file")
    args = parser.parse_args()
    text = table()
    if args.write is None:
        print(text, end="")
        return
    doc = args.write.read_text(encoding="utf-8")
    new = re.sub(f"{re.escape(START)}.*?{re.escape(END)}", lambda _: f"{START}\n{text}{END}", doc, flags=re.S)
    args.write.write_text(new, encoding="utf-8")
    print(f"updated {args.write}: {len(CASES)} cases")


if __name__ == "__main__":
    run(main)
