"""Writes the solc standard-JSON input of the project's contracts (ape's settings) to a file.

Used by `make lint`: slither drives the compiler itself and needs this input.
"""

import json
import sys
from pathlib import Path

from offchain.artifacts import standard_json_input

if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(standard_json_input(), indent=1))
