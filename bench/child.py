"""Run a benchmark's measurement in a fresh Python process (its own peak RSS, no state left
over from an earlier measurement) and read the JSON object it prints last."""

from __future__ import annotations

import json
import subprocess
import sys


def run_child(code: str, args: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", code, json.dumps(args)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
