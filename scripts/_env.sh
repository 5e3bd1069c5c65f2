# Shared by scripts/demo, scripts/test and scripts/bench: find Python >= 3.11 and make .venv.
# Usage: source scripts/_env.sh; ensure_venv '.[test]'

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  echo "error: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

ensure_venv() {
  local spec="$1"
  if [ ! -x .venv/bin/python ]; then
    local python
    python=$(find_python)
    echo "creating .venv with $python" >&2
    "$python" -m venv .venv
  fi
  # install again only when the package's requirements changed (or another extra is wanted)
  local stamp
  stamp=".venv/.installed-$(printf '%s' "$spec" | tr -c 'a-z' '_')-$(cksum < pyproject.toml | cut -d' ' -f1)"
  if [ ! -e "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec" 2>&1 \
      | grep -v -E '^(WARNING: Location|DEPRECATION)' >&2 || true
    .venv/bin/python -c 'import tradecli' || { echo "error: installing tradecli failed" >&2; return 1; }
    touch "$stamp"
  fi
  # bytecode for every module, written even where PYTHONDONTWRITEBYTECODE is set (as in many
  # containers): otherwise each stage compiles tradecli again and starts about 50 ms later
  .venv/bin/python -m compileall -q tradecli >/dev/null || true
}
