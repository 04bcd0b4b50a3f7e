#!/usr/bin/env bash
# Fetch (here, with network) the wheels `make bench-gpu` needs that the H200 image lacks, into .whl/
# (ignored through .git/info/exclude). The GPU run (device tool: carry [".whl"], timeout_s 600) is then:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site && python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1;
#   set -o pipefail; PYTHONUNBUFFERED=1 python3 -m bench.gpu --copy-to "$OUT" 2>&1 | tail -80
# Versions: the ones in this venv. Everything else bench.gpu needs is in the H200 image.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
for spec in $(.venv/bin/python - <<'PY'
from importlib.metadata import version
for name in ("zarr", "numcodecs", "donfig", "webdataset", "braceexpand", "google-crc32c"):
    print(f"{name}=={version(name)}")
PY
); do
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$spec"
done
ls -la .whl
