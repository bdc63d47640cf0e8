#!/usr/bin/env bash
# A virtual environment on this machine's own PyTorch, for `make gpu-check` where the pinned torch
# (2.14.1, CUDA 13 wheels) cannot be installed or cannot drive the GPU (an older driver, another
# CUDA, an aarch64 box, a vendor container). Usage: scripts/gpu_venv.sh [VENV] (default .venv-gpu).
#
# GPU_BASE_PYTHON (default python3) must be Python 3.11 (the project's requires-python), import a
# CUDA build of torch, and not be a venv itself (a system, container or conda interpreter). The venv sees that interpreter's packages (--system-site-packages); every
# other dependency is installed at requirements/lock.txt's pins, with torch and torchvision held at
# the versions the base interpreter already has, so pip cannot replace them: it fails instead.
# GPU_VENV_DRY_RUN=1 prints what would be done and writes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv-gpu}
base=${GPU_BASE_PYTHON:-python3}
dry=${GPU_VENV_DRY_RUN:-0}

if ! probe=$("$base" - <<'EOF'
import sys
try:
    import torch
except ImportError as exc:
    sys.exit(f"{sys.executable} cannot import torch ({exc})")
try:
    import torchvision
    vision = torchvision.__version__
except ImportError:
    vision = "-"
venv = "venv" if sys.prefix != sys.base_prefix else "base"
print(f"{sys.version_info[0]}.{sys.version_info[1]} {torch.__version__} {torch.version.cuda} {vision} {venv}")
EOF
); then
  echo "gpu-venv: $base has no usable torch; install a CUDA build of torch for it, or use make install" >&2
  exit 2
fi
read -r python torch cuda vision kind <<<"$probe"
if [[ $python != 3.11 ]]; then
  echo "gpu-venv: $base is Python $python; the project needs 3.11 (set GPU_BASE_PYTHON)" >&2
  exit 2
fi
if [[ $kind == venv && $dry != 1 ]]; then
  # A venv made from a venv sees the base interpreter's packages, not this venv's torch.
  echo "gpu-venv: $base is itself a virtual environment; use the interpreter that owns torch" >&2
  exit 2
fi
if [[ $cuda == None ]]; then
  echo "gpu-venv: torch $torch of $base is a CPU-only build; install a CUDA build first" >&2
  exit 2
fi
echo "gpu-venv: $base, Python $python, torch $torch (CUDA $cuda), torchvision $vision -> $venv"

# Constraints: the lock without torch, torchvision and the CUDA wheels they bring, plus the base's
# own torch (and torchvision) pinned. Requirements: pyproject's dependencies and dev extras except
# torch and torchvision.
constraints=$(grep -vE '^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)==' requirements/lock.txt)
constraints+=$'\n'"torch==$torch"
[[ $vision != - ]] && constraints+=$'\n'"torchvision==$vision"
requirements=$("$base" - <<'EOF'
import re
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
    if re.split(r"[\s\[=<>!~;]", requirement, maxsplit=1)[0] not in ("torch", "torchvision"):
        print(requirement)
EOF
)
if [[ $dry == 1 ]]; then
  echo "--- constraints (torch lines) ---"
  grep -E '^(torch|torchvision)==' <<<"$constraints" || true
  echo "--- requirements ---"
  echo "$requirements"
  echo "--- would run ---"
  echo "$base -m venv --system-site-packages $venv"
  echo "$venv/bin/python -m pip install -c CONSTRAINTS -r REQUIREMENTS"
  echo "$venv/bin/python -m pip install --no-deps -e ."
  echo "$venv/bin/python -m pip install --no-deps antlr4-python3-runtime==4.13.2"
  exit 0
fi

"$base" -m venv --system-site-packages "$venv"
printf '%s\n' "$constraints" >"$venv/constraints.txt"
printf '%s\n' "$requirements" >"$venv/requirements.txt"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -c "$venv/constraints.txt" -r "$venv/requirements.txt"
"$venv/bin/python" -m pip install --quiet --no-deps -e .
# As in the Makefile: Dagster's asset-selection parser needs the antlr4 4.13 runtime, installed last.
"$venv/bin/python" -m pip install --quiet --no-deps antlr4-python3-runtime==4.13.2
# The torch the venv imports must be the base interpreter's, not a copy pip put in the venv.
"$venv/bin/python" - "$venv" "$torch" <<'EOF'
import sys
from pathlib import Path

import torch

venv, expected = Path(sys.argv[1]).resolve(), sys.argv[2]
where = Path(torch.__file__).resolve()
if torch.__version__ != expected or venv in where.parents:
    sys.exit(f"gpu-venv: the venv imports torch {torch.__version__} from {where}, not {expected}")
print(f"gpu-venv: ready; torch {torch.__version__} from {where.parent}")
EOF
echo "gpu-venv: now run  make gpu-check  (it uses $venv when it exists)"
