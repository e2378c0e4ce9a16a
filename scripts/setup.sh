#!/usr/bin/env bash
# Idempotent setup: a virtualenv in .venv, jcw and its dependencies, and the Fashion-MNIST dataset.
# A rerun skips every step that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.jcw-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! .venv/bin/python -c "import jcw" 2>/dev/null; then
  echo "setup: installing jcw and its dependencies (torch is about 5 GB; a few minutes the first time)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[test]"
  touch "$stamp"
fi

DATA=/usr/share/datasets/fashion-mnist
if [ -z "${JCW_DATA:-}" ] && [ ! -f "$DATA/train-images-idx3-ubyte.gz" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: no apt-get; jcw will try torchvision's download, or set JCW_DATA to a folder with the four .gz files"
  fi
fi
echo "setup: done"
