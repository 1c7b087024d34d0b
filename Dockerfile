# zdc-sim on a CUDA runtime: serves the shipped default model by default; the same entry point
# runs training and export (docker run IMAGE train ..., docker run IMAGE export ...).
# Build: docker build -t zdc-sim .   Run: docker run --gpus all -p 8000:8000 zdc-sim
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
# The CUDA build of the torch version that requirements.lock pins for CPU.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
# DL3008: apt packages follow the base image's Ubuntu release (security updates), not pins.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --index-url "${TORCH_INDEX}" torch==2.13.0 \
    && grep -v '^torch==' requirements.lock > /tmp/constraints.txt
COPY zdc_sim ./zdc_sim
COPY training ./training
COPY service ./service
# The same pinned versions `make run` installs (torch excepted: the CUDA build above).
RUN pip install -c /tmp/constraints.txt .

FROM ${CUDA_IMAGE}
# DL3008: as above.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 zdc
COPY --from=build /opt/venv /opt/venv
# MALLOC_ARENA_MAX=2: fewer glibc arenas from the first allocation on (docs/service.md, memory under load)
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 ZDC_SIM_HOST=0.0.0.0 ZDC_SIM_PORT=8000 MALLOC_ARENA_MAX=2
USER 10001
WORKDIR /home/zdc
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=2)"]
ENTRYPOINT ["zdc-sim"]
CMD ["serve"]
