#!/usr/bin/env bash
# Create one virtual environment per benchmark peer under benchmarks/.venvs/ (git-ignored).
#
#   tflite  tensorflow-cpu 2.18.1 + tf_keras: the seed tutorial's path (train signature through
#           the Select-TF-ops "Flex" delegate, which the tensorflow wheel links in)
#   ortt    onnxruntime-training 1.19.2 (artifacts.generate_artifacts + training.api) with the
#           numpy 1.x / onnx versions that build supports. Its Python package imports torch
#           (onnxruntime/training/__init__.py), so this venv also sees the main interpreter's
#           site-packages for torch==2.13.0; its own numpy/onnx/onnxruntime come first.
#   torch   PyTorch eager: reuses the main interpreter's torch==2.13.0 through a venv with
#           --system-site-packages (never installs another torch)
#
# Installs from PyPI only. Idempotent: a venv whose stamp matches its pinned requirements is
# left alone; delete benchmarks/.venvs/NAME (or pass --force) to rebuild it.
#
#   bash benchmarks/setup_peers.sh [--force] [tflite|ortt|torch ...]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venvs="$here/.venvs"
python="${PYTHON:-python3}"
force=0
peers=()
for a in "$@"; do
  case "$a" in
    --force) force=1 ;;
    tflite|ortt|torch) peers+=("$a") ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done
[ ${#peers[@]} -eq 0 ] && peers=(tflite ortt torch)

declare -A reqs
reqs[tflite]="tensorflow-cpu==2.18.1 tf_keras==2.18.0 numpy==1.26.4"
reqs[ortt]="onnxruntime-training==1.19.2 numpy==1.26.4 onnx==1.16.2 protobuf==4.25.5"
reqs[torch]=""

mkdir -p "$venvs"
for peer in "${peers[@]}"; do
  dir="$venvs/$peer"
  stamp="$dir/.edgetrain-bench-stamp"
  want="$("$python" -c 'import sys; print(sys.version.split()[0])') ${reqs[$peer]}"
  if [ "$force" = 0 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "[$peer] up to date ($dir)"
    continue
  fi
  echo "[$peer] creating $dir"
  rm -rf "$dir"
  if [ "$peer" = torch ] || [ "$peer" = ortt ]; then
    "$python" -c 'import torch, sys; v = torch.__version__.split("+")[0]
sys.exit(0 if v == "2.13.0" else f"torch {v} found; the {sys.argv[1]} peer needs torch==2.13.0")' \
      "$peer"
    "$python" -m venv --system-site-packages "$dir"
  else
    "$python" -m venv "$dir"
  fi
  if [ -n "${reqs[$peer]}" ]; then
    # PyPI only: ignore any extra index or local wheel folder configured for this machine.
    # --ignore-installed: the pinned versions go into the venv even where the main
    # interpreter's site-packages (visible to the ortt venv) already has other versions.
    env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL PIP_CONFIG_FILE=/dev/null \
      "$dir/bin/python" -m pip install --quiet --disable-pip-version-check \
      --index-url https://pypi.org/simple --ignore-installed ${reqs[$peer]}
  fi
  "$dir/bin/python" - "$peer" <<'PY'
import sys
peer = sys.argv[1]
if peer == "tflite":
    import tensorflow as tf, tf_keras
    print(f"[tflite] tensorflow {tf.__version__}, tf_keras {tf_keras.__version__}")
elif peer == "ortt":
    import onnxruntime, onnx, numpy
    from onnxruntime.training import artifacts, api  # noqa: F401
    print(f"[ortt] onnxruntime-training {onnxruntime.__version__}, onnx {onnx.__version__}, "
          f"numpy {numpy.__version__}")
else:
    import torch
    print(f"[torch] torch {torch.__version__}")
PY
  echo "$want" > "$stamp"
done
