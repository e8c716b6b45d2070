# The Vibrary trainer: `vibrary trainer serve` for your own GPU box, and the image the cloud job runs
# (`vibrary trainer run-s3 s3://…/job.json`, see docs/cloud.md).
#
#   CPU build (default):  docker build -t vibrary-trainer .
#   CUDA build (GPU host): docker build -t vibrary-trainer:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   run:  docker run -d -p 7878:7878 -v vibrary-trainer:/data -e VIBRARY_TRAINER_TOKEN=… [--gpus all] vibrary-trainer
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 VIBRARY_HOME=/data

# torch first, from the index of the wanted build: its layer survives changes to Vibrary's code
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
COPY clients ./clients
COPY trainer ./trainer
COPY proto ./proto
RUN pip install ".[trainer,cloud]" && rm -rf /src

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin vibrary \
    && mkdir -p /data && chown vibrary:vibrary /data && chmod 700 /data
USER vibrary
WORKDIR /home/vibrary
VOLUME ["/data"]
EXPOSE 7878

# gRPC health over the same transport the trainer serves (TLS when VIBRARY_TRAINER_TLS_CERT is set)
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["vibrary", "trainer", "health", "--target", "127.0.0.1:7878"]

# Off loopback the trainer refuses to start without a token: VIBRARY_TRAINER_TOKEN, or per-user tokens
# made with `docker exec … vibrary trainer token add USER`. TLS: mount a certificate and key and set
# VIBRARY_TRAINER_TLS_CERT and VIBRARY_TRAINER_TLS_KEY to their paths.
CMD ["vibrary", "trainer", "serve", "--listen", "0.0.0.0:7878"]
