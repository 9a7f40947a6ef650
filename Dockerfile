# Two images from one file:
#   docker build --target api    -t flatlay-api .     (FastAPI; no torch)
#   docker build --target worker -t flatlay-worker .  (Celery worker; CUDA torch)

FROM python:3.11-slim AS api
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 FLATLAY_DATA_DIR=/data
WORKDIR /app
COPY pyproject.toml README.md cli.py ./
COPY service ./service
COPY workers ./workers
COPY models ./models
COPY structure_bank ./structure_bank
COPY client ./client
RUN pip install .
VOLUME /data
EXPOSE 8000
CMD ["flatlay", "api", "--host", "0.0.0.0", "--port", "8000"]

FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 AS worker
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 FLATLAY_DATA_DIR=/data DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /venv
ENV PATH=/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md cli.py ./
COPY service ./service
COPY workers ./workers
COPY models ./models
COPY structure_bank ./structure_bank
COPY client ./client
# torch is pinned in the `ml` extra (torch==2.14.1, torchvision==0.29.1).
RUN pip install '.[ml]'
VOLUME /data
CMD ["flatlay", "worker", "--concurrency", "1"]
