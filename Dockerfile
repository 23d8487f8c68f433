# The job system and the harness in one image: `jobharness api`, `supervisor`, `state serve`,
# `db migrate`, and Locust (loadtests/locustfile.py). See docker-compose.yml.
FROM python:3.11.10-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    JOBHARNESS_DATA_DIR=/data
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY core ./core
COPY migrations ./migrations
COPY loadtests ./loadtests
COPY chaos ./chaos
COPY predictor ./predictor
COPY reports ./reports
RUN pip install -c constraints.txt . && useradd --uid 10001 --create-home jobharness \
    && mkdir -p /data && chown jobharness /data
USER jobharness
ENTRYPOINT ["jobharness"]
CMD ["--help"]
