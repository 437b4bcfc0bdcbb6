#!/usr/bin/env bash
# Makes (or reuses) the MONAI Label environment and prints its python.
#
#   monailabel_app/make_env.sh [ENV_DIR]      (default: $HDHKD_MONAILABEL_ENV or ~/.cache/hdhkd-monai/monailabel-env)
#
# monailabel needs numpy<2 (its dependency pydicom-seg pins numpy<2 and jsonschema<4) and pydicom<3, while
# hdhkd-monai runs on numpy 2 and pydicom 3, so it cannot share hdhkd-monai's environment. This venv installs
# monailabel, MONAI and the packages a packed model's scripts/ import (requirements.txt), and reuses only torch and
# itk (and what they require but numpy: ~6.5 GB with torch's CUDA libraries) from the calling python through links
# (link_base.py) and a .pth file, so the rest of that environment (hdhkd-monai itself, packages built for numpy 2) stays out of it and
# `pip check` finds no conflict. The environment is reused while requirements.txt, link_base.py and the calling
# python's site-packages folders are unchanged.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
env_dir="${1:-${HDHKD_MONAILABEL_ENV:-$HOME/.cache/hdhkd-monai/monailabel-env}}"
# the calling python's site-packages folders (a venv's own and, with --system-site-packages, its base's)
base_sites="$(python -c 'import site; print("\n".join(site.getsitepackages()))')"
key="$(cat "$here/requirements.txt" "$here/link_base.py" - <<<"$base_sites" | sha256sum | cut -d' ' -f1)"
source "$here/../tools/cached_env.sh"
reuse_cached_env "$env_dir" "$key" monailabel && exit 0
python -m venv "$env_dir"
python "$here/link_base.py" "$env_dir/linked" torch itk --except numpy
env_site="$("$env_dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "import site; site.addsitedir('$env_dir/linked')" > "$env_site/hdhkd-linked.pth"
"$env_dir/bin/python" -m pip install -q -r "$here/requirements.txt" >&2
"$env_dir/bin/python" -m pip check >&2
mark_cached_env "$env_dir" "$key"
