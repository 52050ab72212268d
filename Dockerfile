# One image for every role: migrate, worker, beat and api differ only in their command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY . .
RUN pip install . && useradd --create-home --uid 10001 tep && chown tep /app
USER tep
CMD ["celery", "-A", "worker", "worker", "--loglevel", "INFO"]
