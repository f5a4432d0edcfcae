# The mateo-bulk command in an image, for schedulers that run containers (the README's
# Kubernetes CronJob):
#
#   docker build -t registry.example.com/mateo-bulk:0.1.0 .
#   docker run --rm -e MATEO_API_TOKEN -v "$PWD:/data" registry.example.com/mateo-bulk:0.1.0 \
#       run changes.csv --dry-run
#
# The working directory /data is where inputs are read and run directories, reports and the
# daily-budget ledger (MATEO_BULK_STATE_DIR) are written: mount a volume there so that a stopped
# run can be resumed by the next container.
FROM python:3.12-slim

# No .pyc files written at run time (the image is read-only in many clusters), output unbuffered
# (a scheduler's log shows events as they happen), no pip cache kept in the image.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MATEO_BULK_STATE_DIR=/data/state

WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
RUN pip install . && rm -rf /src

# A user of its own: the tool needs no privilege, and files it writes on a mounted volume are
# not root's.
RUN useradd --create-home --uid 10001 mateo && mkdir -p /data && chown mateo /data
USER mateo
WORKDIR /data

ENTRYPOINT ["mateo-bulk"]
CMD ["--help"]
