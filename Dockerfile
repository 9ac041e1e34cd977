# syntax=docker/dockerfile:1
# One image for every Conveyor process; compose.yaml picks the part with the command
# (`conveyor api`, `conveyor worker --queues uploads`, `conveyor beat`, `conveyor flower`).
#
#   docker build -t conveyor .                        # with the PostgreSQL driver (default)
#   docker build --build-arg EXTRAS= -t conveyor .    # without it

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: a virtualenv in /opt/venv, dependencies first so that code edits reuse that layer
FROM ${PYTHON_IMAGE} AS build

# Comma-separated extras of pyproject.toml to install as well ("postgres" adds psycopg).
ARG EXTRAS=postgres

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /src

# Install the dependencies named in pyproject.toml alone: this layer changes only with pyproject.toml.
COPY pyproject.toml ./
RUN python -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
extras = [e for e in sys.argv[1].split(",") if e]; \
print("\n".join(p["dependencies"] + [d for e in extras for d in p["optional-dependencies"][e]]))' \
        "$EXTRAS" > requirements.txt \
    && pip install -r requirements.txt

# Then the project itself, without touching the dependencies installed above.
COPY README.md ./
COPY conveyor ./conveyor
COPY api ./api
COPY worker ./worker
RUN pip install --no-deps . \
    && conveyor --help > /dev/null

# --- runtime: the virtualenv, no source tree, no build files
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    CONVEYOR_DATA_DIR=/data \
    CONVEYOR_API_HOST=0.0.0.0 \
    CONVEYOR_FLOWER_HOST=0.0.0.0

# A fixed uid/gid so that volumes keep one owner across rebuilds. An empty named volume mounted
# on /data takes this directory's owner, so the job store, spool and storage are writable.
RUN groupadd --system --gid 10001 conveyor \
    && useradd --system --uid 10001 --gid conveyor --home-dir /home/conveyor --create-home \
        --shell /usr/sbin/nologin conveyor \
    && install -d -o conveyor -g conveyor -m 0750 /data

COPY --from=build /opt/venv /opt/venv

USER 10001:10001
WORKDIR /home/conveyor

EXPOSE 8000 5555

CMD ["conveyor", "api"]
