# syntax=docker/dockerfile:1
# Two images from one file (see docs/serving.md):
#   docker build --target serve -t dispatch-serve .   (default target: gRPC decision service, no torch)
#   docker build --target train -t dispatch-train .   (simulator + training + export, with torch CPU)

# ---- build: the project and the serving dependencies in a virtual environment ----
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY docker/serve-constraints.txt ./docker/
RUN pip install --no-cache-dir -c docker/serve-constraints.txt \
        "grpcio==1.85.1" "grpcio-health-checking==1.85.1" "grpcio-reflection==1.85.1" "protobuf==7.36.2" \
        "onnxruntime==1.32.0" "prometheus-client==0.26.0" "numpy==2.4.6" "numba==0.68.1" "scipy==1.17.1" \
        "tqdm==4.70.1"
COPY pyproject.toml README.md ./
COPY dispatch ./dispatch
COPY dispatch_cli ./dispatch_cli
COPY service ./service
COPY simulator ./simulator
COPY training ./training
# The decision path's compiled kernels are built once here (into NUMBA_CACHE_DIR), not on the first request.
# Run from / with -P so the installed package is what gets imported and cached (numba keys its cache by
# the source folder), for a generic CPU so the cache matches whatever host runs the image.
ENV NUMBA_CACHE_DIR=/opt/numba-cache NUMBA_CPU_NAME=generic
WORKDIR /
RUN pip install --no-cache-dir --no-deps /src \
    && python -P -c "import service.server, sys; assert 'torch' not in sys.modules" \
    && python -P -m dispatch.kernels --warm

# ---- train: simulator, offline logs, training and export (torch CPU build, pinned) ----
FROM python:3.11-slim-bookworm AS train
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
RUN useradd --create-home --uid 10001 --no-log-init trainer
WORKDIR /work
COPY pyproject.toml README.md ./
COPY dispatch ./dispatch
COPY dispatch_cli ./dispatch_cli
COPY service ./service
COPY simulator ./simulator
COPY training ./training
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
    && pip install --no-cache-dir "numpy==2.4.6" "numba==0.68.1" "scipy==1.17.1" "tqdm==4.70.1" "onnx==1.23.2" "onnxruntime==1.32.0" \
        "tensorboard==2.21.0" "pyarrow==26.0.1" "pettingzoo==1.27.0" "gymnasium==1.4.0" \
    && pip install --no-cache-dir --no-deps .
USER 10001
ENTRYPOINT ["dispatch"]
CMD ["--help"]

# ---- serve: the decision service only; no torch, no compilers, non-root ----
FROM python:3.11-slim-bookworm AS serve
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/opt/numba-cache NUMBA_CPU_NAME=generic
RUN useradd --system --uid 10001 --no-create-home --no-log-init dispatch
COPY --from=build /opt/venv /opt/venv
# numba only uses a cache folder it can write to: the service user owns the prebuilt one (without it,
# e.g. under another uid or a read-only root, the kernels compile at start instead: slower, not broken).
COPY --from=build --chown=10001:10001 /opt/numba-cache /opt/numba-cache
USER 10001
WORKDIR /models
# gRPC, Prometheus /metrics
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-m", "service.healthprobe", "--target", "127.0.0.1:50051"]
# With --workers N, run under an init (`docker run --init`): see docs/serving.md, "Container images".
ENTRYPOINT ["dispatch", "serve"]
CMD ["--model", "/models/model.onnx", "--host", "0.0.0.0", "--port", "50051", "--metrics-host", "0.0.0.0", "--metrics-port", "9464"]
