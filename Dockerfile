# The kdigits image: runs the controller (`kdigits serve`) and serves as the image of every Ray
# head and worker in the Helm chart's RayCluster, so job code and controller always match.
#
#   docker build -t ghcr.io/kdigits/kdigits:0.1.0 .
#
# Ray's version must equal the chart's ray.version (KubeRay's rayVersion); a test checks it.
ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------- build: a venv with kdigits
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG RAY_VERSION=2.60.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY jobs ./jobs
COPY controller ./controller
# torch==2.14.1 and torchvision==0.29.1 come from pyproject.toml (PyPI's Linux wheels are the
# CUDA builds; the NVIDIA driver comes from the node through the container toolkit).
RUN pip install --upgrade pip \
 && pip install "ray[default,train]==${RAY_VERSION}" . \
 && python -c "import torch, torchvision, ray, controller, jobs; \
assert torch.__version__.startswith('2.14.1'), torch.__version__; \
assert torchvision.__version__.startswith('0.29.1'), torchvision.__version__"

# ---------------------------------------------------------------- runtime: non-root
FROM python:${PYTHON_VERSION}-slim-bookworm
# wget: KubeRay's health probes of Ray pods call it. bash: KubeRay starts Ray through `bash -lc`.
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget bash ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1000 kdigits \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/kdigits --shell /bin/bash kdigits \
 && install -d -o 1000 -g 1000 /var/lib/kdigits
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/kdigits \
    KDIGITS_HOME=/var/lib/kdigits
USER 1000:1000
WORKDIR /home/kdigits
EXPOSE 5000
# No ENTRYPOINT: KubeRay replaces the command with `ray start ...` for Ray pods.
CMD ["kdigits", "serve", "--host", "0.0.0.0"]
