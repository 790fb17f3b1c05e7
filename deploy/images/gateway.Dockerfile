# The gateway (python -m gateway), also the image of the migrations Job and `helm test`.
# Build from the repository root:
#   docker build -f deploy/images/gateway.Dockerfile -t REGISTRY/gateway:0.1.0 .
# Installs exactly requirements.lock (make lock), the same pins `make install` uses.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# tini is PID 1: it passes signals on to our process and reaps whatever ends under it
# (the processes we start end with their parent: gateway/children.py, worker/boot/).
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends tini && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.lock ./
RUN python3 -m pip install -q -r requirements.lock
# nginx/ travels too: the compose file renders Nginx's config with it.
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY nginx ./nginx
RUN python3 -m pip install -q --no-deps .

# The interaction-log spool's folder, owned by the gateway's user (a compose volume takes
# its owner from here; the chart mounts an emptyDir).
COPY --chown=10001:10001 deploy/images/spool-dir/ /var/spool/vlm-serve/

# Non-root; nothing is written under / at run time (the chart mounts /tmp and the spool).
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python3", "-m", "gateway", "--host", "0.0.0.0", "--port", "8000", "--drain-delay", "5", "--graceful-timeout", "30"]
