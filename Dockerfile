# One image for every role: migrate, worker, beat and api differ only in their command.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# The dependencies first, from pyproject.toml's list at constraints.txt's versions: this layer is
# rebuilt when those two files change, not on every change to the source.
COPY pyproject.toml constraints.txt ./
RUN pip install -c constraints.txt --upgrade pip \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -c constraints.txt -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# Then tep itself (.dockerignore leaves tests/, bench/ and the rest out); its dependencies are
# already installed.
COPY . .
RUN pip install --no-deps . && useradd --create-home --uid 10001 tep && chown tep /app
USER tep
CMD ["celery", "-A", "worker", "worker", "--loglevel", "INFO"]
