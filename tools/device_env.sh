# Source this on a GPU machine that lacks diffusers/pydantic: installs the wheels carried in .whl/
# (see docs/benchmarks/README.md) into /tmp/site and puts src/ on PYTHONPATH. torchao goes to /tmp/ao,
# added only when LIGHTDIFF_TORCHAO=1, since a torchao that does not match torch breaks diffusers' import.
set -e
ls .whl/*.whl | grep -v torchao | xargs python3 -m pip install -q --no-index --no-deps --target /tmp/site
if ls .whl/torchao-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/ao .whl/torchao-*.whl
fi
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error
if [ "${LIGHTDIFF_TORCHAO:-0}" = 1 ]; then export PYTHONPATH=/tmp/ao:$PYTHONPATH; fi
set +e
