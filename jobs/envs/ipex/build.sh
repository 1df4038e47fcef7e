#!/usr/bin/env bash
# Build (or reuse) the IPEX virtualenv: torch 2.8.0 + intel-extension-for-pytorch
# 2.8.0 + the project installed editable. It lives OUTSIDE the clone, in
#   ${CPUEVAL_ENV_CACHE:-$HOME/.cache/cpueval/envs}/ipex-<key>
# where <key> = first 12 hex of sha256(requirements.txt + python version +
# pyproject's [project].dependencies). Prints ONLY the env path on stdout (last
# line); everything else goes to stderr:
#   IPEX_PY=$(bash jobs/envs/ipex/build.sh)/bin/python
# Usage: build.sh [PROJECT_DIR]   (default: the clone this script is in)
# Env:   CPUEVAL_ENV_CACHE  cache root;  CPUEVAL_PYTHON  interpreter (default python3)
set -euo pipefail

log() { printf 'ipex-env: %s\n' "$*" >&2; }
die() { printf 'ipex-env: error: %s\n' "$*" >&2; exit 1; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REQS="$HERE/requirements.txt"
PROJECT_DIR="${1:-$(cd "$HERE/../../.." && pwd)}"
[[ -d "$PROJECT_DIR" ]] || die "project dir not found: $PROJECT_DIR"
PROJECT_DIR="$(cd "$PROJECT_DIR" && pwd)"
[[ -f "$PROJECT_DIR/pyproject.toml" ]] || die "no pyproject.toml in $PROJECT_DIR"
[[ -f "$REQS" ]] || die "missing $REQS"

PYTHON="${CPUEVAL_PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || die "python not found: $PYTHON (set CPUEVAL_PYTHON)"
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')" \
  || die "cannot run $PYTHON"
"$PYTHON" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] <= (3, 13)))' \
  || die "python $PYVER unsupported: IPEX 2.8.0 wheels + cpueval need 3.11-3.13 (set CPUEVAL_PYTHON)"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
  || die "$PYTHON lacks venv/ensurepip (Debian: apt-get install python3-venv)"

DEPS="$("$PYTHON" - "$PROJECT_DIR/pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
PY
)" || die "cannot read [project].dependencies from $PROJECT_DIR/pyproject.toml"

KEY="$({ cat "$REQS"; printf '\npython=%s\n' "$PYVER"; printf '%s\n' "$DEPS"; } \
  | sha256sum | cut -c1-12)"
CACHE="${CPUEVAL_ENV_CACHE:-$HOME/.cache/cpueval/envs}"
ENV="$CACHE/ipex-$KEY"
MARKER=".cpueval-env-complete"
mkdir -p "$CACHE" || die "cannot create $CACHE"

# Keep at most the current env: drop ipex-* envs of other keys and temp dirs of
# builds that are no longer running.
cleanup_old() {
  local d pid
  for d in "$CACHE"/ipex-*; do
    [[ -e "$d" && "$d" != "$ENV" ]] || continue
    log "removing old env $d"; rm -rf -- "$d"
  done
  for d in "$CACHE"/.tmp-ipex-*; do
    [[ -e "$d" ]] || continue
    pid="${d##*-}"
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then continue; fi
    log "removing stale partial build $d"; rm -rf -- "$d"
  done
}

if [[ -f "$ENV/$MARKER" ]]; then
  log "reusing $ENV"
  # The env may have been built from another clone: point its editable install at this one (no
  # dependency changes: --no-deps).
  # No build isolation: it would fetch a fresh setuptools for every reuse; the env's own (plus wheel) builds it.
  "$ENV/bin/python" -m pip install -q wheel >&2 || die "installing wheel into $ENV failed"
  "$ENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$PROJECT_DIR" >&2 \
    || die "re-pointing the editable install at $PROJECT_DIR failed"
  cleanup_old
  printf '%s\n' "$ENV"
  exit 0
fi
[[ -e "$ENV" ]] && { log "removing incomplete $ENV"; rm -rf -- "$ENV"; }
cleanup_old

START=$SECONDS
TMP="$CACHE/.tmp-ipex-$KEY-$$"
trap 'rm -rf -- "$TMP"' EXIT
log "building $ENV (python $PYVER, project $PROJECT_DIR); logs below"
"$PYTHON" -m venv "$TMP" >&2 || die "venv creation failed in $TMP"
PIP=("$TMP/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip >&2 || die "pip upgrade failed"
log "installing requirements (torch 2.8.0 CUDA wheel: ~3.7 GB download)"
"${PIP[@]}" install -r "$REQS" >&2 || die "pip install -r $REQS failed"
log "installing $PROJECT_DIR editable, constrained to $REQS"
"${PIP[@]}" install -c "$REQS" -e "$PROJECT_DIR[test]" >&2 \
  || die "pip install -e $PROJECT_DIR failed"

# Smoke check: versions unchanged and IPEX imports.
"$TMP/bin/python" - >&2 <<'PY' || die "smoke check failed (see above)"
import torch, intel_extension_for_pytorch as ipex, transformers, cpueval
assert torch.__version__.startswith("2.8.0"), f"torch changed to {torch.__version__}"
assert ipex.__version__.startswith("2.8.0"), f"ipex is {ipex.__version__}"
print(f"smoke ok: torch {torch.__version__}, ipex {ipex.__version__}, "
      f"transformers {transformers.__version__}, cpu isa {torch.backends.cpu.get_cpu_capability()}")
PY

# Venvs hard-code their path in scripts: point them at the final location.
grep -rlIF -- "$TMP" "$TMP/bin" "$TMP/pyvenv.cfg" 2>/dev/null | while IFS= read -r f; do
  sed -i "s|$TMP|$ENV|g" "$f"
done
date -u +%FT%TZ > "$TMP/$MARKER"
if ! mv -T -- "$TMP" "$ENV" 2>/dev/null; then
  [[ -f "$ENV/$MARKER" ]] || die "cannot move $TMP to $ENV"
  log "another build finished $ENV first; using it"
  rm -rf -- "$TMP"
fi
trap - EXIT
"$ENV/bin/python" -c 'import cpueval' || die "env at $ENV broken after move"
log "built $ENV in $((SECONDS - START)) s"
printf '%s\n' "$ENV"
