"""Print the table of docs/bad-inputs.md: every malformed input of the test table and the message it gets.

Runs the very cases of ``tests/test_bad_inputs.py`` (defined in
``tests/bad_input_cases.py``) through the real CLI, so the documented
messages are the ones users see. Regenerate the doc after changing a message::

    python scripts/bad_inputs_table.py > /tmp/table.md   # then paste it into docs/bad-inputs.md
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bad_input_cases import CASES, build_workspace, command_text, run_cli, snapshot  # noqa: E402


def cell(text: str) -> str:
    """Text that stays inside one markdown table cell."""
    return text.strip().replace("|", "\\|").replace("\n", " ⏎ ")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        template = build_workspace(Path(tmp) / "template")
        print("| # | input | command | exit | message (stderr) | nothing written |")
        print("|---|---|---|---|---|---|")
        for n, case in enumerate(CASES, 1):
            root = Path(tmp) / case.id
            shutil.copytree(template, root)
            args = case.setup(root)
            before = snapshot(root)
            result = run_cli(args, root)
            message = result.stderr.replace(f"{root}/", "").replace(str(root), ".")
            untouched = "yes" if snapshot(root) == before else "**no**"
            print(f"| {n} | {cell(case.what)} | `{cell(command_text(args))}` | {result.exit_code} | {cell(message)} | {untouched} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
