# One image for every meshcompute service (market api, celery, verifier, worker, deployer).
# The CPU build of torch is pinned first so pip does not pull a multi-GB CUDA build; for a GPU
# worker, build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124.
FROM python:3.11-slim
ARG TORCH=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap curl \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" "$TORCH"
COPY pyproject.toml README.md ./
COPY meshcompute ./meshcompute
COPY market ./market
COPY worker ./worker
COPY verifier ./verifier
COPY mesh ./mesh
COPY docker ./docker
RUN pip install --no-cache-dir '.[market,worker,verifier]'
RUN useradd --create-home mesh && mkdir /data && chown mesh /data
USER mesh
ENV MESH_DATA_DIR=/data
