#!/usr/bin/env bash
# Creates .venv (once) and installs labelmix with its test extras into it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# Where pip is capped to the PyTorch files on local disk (this project's build machines), take
# exactly those; elsewhere pip picks the torch build that fits the machine.
if [ -f /etc/xdg/pip/constraints.txt ] && grep -q '^torch<=2.14.1' /etc/xdg/pip/constraints.txt; then
  .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
.venv/bin/python -m pip install -q -e '.[test]'
