"""Runs slither and fails when it did not analyse everything.

Used by `make lint`: `python toolchain/slither_check.py slither ARGS...`. Slither logs a contract it
cannot build its IR for ("Impossible to generate IR for ...") at ERROR level, leaves that function out,
reports what it found in the rest and exits 0 — a lint that passes because it did not look. This
wrapper passes slither's output through unchanged and exits non-zero if slither failed, if any line is
an ERROR log (an IR or parsing failure) or if the closing "analyzed (N contracts ...)" line is missing.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Sequence

# What slither prints when it could not analyse a part of the code; any ERROR-level log line of its
# loggers ("ERROR:ContractSolcParsing:", "ERROR:FunctionSolc:", ...) means an incomplete analysis.
_FAILURE = re.compile(r"^ERROR:\S*:|Impossible to generate IR|Failed to generate IR", re.M)
_ANALYSED = re.compile(r"analyzed \((\d+) contracts", re.M)


def problems(output: str) -> list[str]:
    """The reasons slither's combined output shows an incomplete analysis (empty: it analysed all)."""
    found = [match.group(0).strip() for match in _FAILURE.finditer(output)]
    reasons = [line.strip() for line in output.splitlines() if any(f in line for f in found)]
    analysed = _ANALYSED.search(output)
    if analysed is None or int(analysed.group(1)) == 0:
        reasons.append('no "analyzed (N contracts ...)" line with N > 0: slither analysed nothing')
    return list(dict.fromkeys(reasons))


def main(command: Sequence[str]) -> int:
    """Runs `command` (slither and its arguments), echoes its output, and returns the lint's exit code."""
    if not command:
        print("usage: slither_check.py slither ARGS...", file=sys.stderr)
        return 2
    run = subprocess.run(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    sys.stdout.write(run.stdout)
    reasons = problems(run.stdout)
    for reason in reasons:
        print(f"slither_check: incomplete analysis: {reason}", file=sys.stderr)
    if reasons:
        return 1
    return run.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
