# One image for the gateway (`hookgate serve`: Granian), the workers (`hookgate worker`) and the
# migration Job (`hookgate migrate`); the Helm chart (deploy/helm/hookgate) picks the command.
#   docker build -t <registry>/hookgate:<version> .

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/hookgate
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY tenants ./tenants
COPY delivery ./delivery
COPY ml ./ml
COPY dashboard ./dashboard
# A regular (not editable) install; byte-compiled here because the root filesystem is read-only at run time.
RUN /opt/hookgate/bin/pip install . && /opt/hookgate/bin/python -m compileall -q /opt/hookgate

FROM python:3.11-slim
RUN groupadd --system --gid 10001 hookgate \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin hookgate
COPY --from=build /opt/hookgate /opt/hookgate
# /tmp is the only writable path (an emptyDir in the chart): temp files and the Prometheus
# multiprocess directory that `hookgate serve` creates there.
ENV PATH=/opt/hookgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    HOOKGATE_MODE=production
USER 10001:10001
EXPOSE 8000 9101
ENTRYPOINT ["hookgate"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
