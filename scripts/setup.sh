#!/usr/bin/env bash
# Idempotent setup: a virtualenv in .venv, jcw and its dependencies (with the tflite extra), and the Fashion-MNIST
# dataset; with --tests, also the headless browser the page test drives (Debian's chromium and chromium-driver).
# A rerun skips every step that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

command -v "$PY" >/dev/null 2>&1 || { echo "setup: error: $PY not found; install Python 3.11 or set PYTHON" >&2; exit 2; }
# Debian and Ubuntu ship venv's pip bootstrap (ensurepip) in a separate package.
if ! "$PY" -c "import ensurepip, venv" 2>/dev/null; then
  pkg="python$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')-venv"
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$SUDO" ] || command -v sudo >/dev/null 2>&1; }; then
    echo "setup: installing $pkg (venv's pip bootstrap, missing from this Python)"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "$pkg" >/dev/null
  else
    echo "setup: error: $PY cannot create a virtualenv (ensurepip is missing); install $pkg and rerun" >&2
    exit 2
  fi
fi
# A .venv left by an earlier failed attempt has a python but no pip: make it again.
if [ -x .venv/bin/python ] && ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  echo "setup: .venv has no pip (an earlier attempt failed); making it again"
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.jcw-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! .venv/bin/python -c "import jcw" 2>/dev/null; then
  echo "setup: installing jcw and its dependencies (torch is about 5 GB; a few minutes the first time)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[test,tflite]"
  touch "$stamp"
fi

DATA=/usr/share/datasets/fashion-mnist
if [ -z "${JCW_DATA:-}" ] && [ ! -f "$DATA/train-images-idx3-ubyte.gz" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: no apt-get; jcw will try torchvision's download, or set JCW_DATA to a folder with the four .gz files"
  fi
fi
if [ "${1:-}" = "--tests" ] && ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing chromium and chromium-driver (the browser tests/test_page.py drives)"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "setup: no apt-get; install chromium and its chromedriver for tests/test_page.py, or it is skipped"
  fi
fi
echo "setup: done"
