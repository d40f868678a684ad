#!/usr/bin/env bash
# Installs detectron2 into the given Python unless it is already importable.
#
# Detectron2 is not on PyPI under its own name. `sal-detectron2==0.7.2` is detectron2 0.7 published as a
# cp310 wheel; its compiled ops (detectron2/_C) do not load on other Pythons, and this project never needs
# them. pip refuses the cp310 tag on 3.11, so the file is installed under a py3-none-any name.
set -euo pipefail
python=${1:-python3}
if "$python" -c "import detectron2" 2>/dev/null; then
    echo "detectron2 already importable: $("$python" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))')"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.10 \
    --dest "$tmp" sal-detectron2==0.7.2
mv "$tmp"/sal_detectron2-0.7.2-cp310-none-any.whl "$tmp"/sal_detectron2-0.7.2-py3-none-any.whl
"$python" -m pip install --quiet --no-deps "$tmp"/sal_detectron2-0.7.2-py3-none-any.whl
"$python" -c "import detectron2; print('installed detectron2', detectron2.__version__)"
