# One image for every clerk-sync process: ingress (default), worker, beat, migrations and flower.
#
#   docker build -t clerk-sync .
#   docker run --rm -e CLERK_WEBHOOK_SECRET=whsec_... -p 8000:8000 clerk-sync
#   docker run --rm ... clerk-sync db upgrade
#   docker run --rm ... clerk-sync worker --concurrency 4
#   docker run --rm ... --entrypoint celery clerk-sync -A workers.main beat --loglevel=INFO
#
# See docker-compose.yml for the full stack.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Unprivileged runtime user with a fixed uid/gid (handy for volume permissions).
RUN groupadd --system --gid 10001 clerk \
    && useradd --system --uid 10001 --gid clerk --create-home --home-dir /home/clerk \
        --shell /usr/sbin/nologin clerk

# Install from a copy of the source tree, then drop the copy: the running code comes from
# site-packages only (so `celery -A workers.main` never picks up a stray checkout in the cwd).
# psycopg[binary] ships wheels, so no compiler or libpq is needed.
COPY pyproject.toml README.md constraints.txt /tmp/src/
COPY clerk_sync/ /tmp/src/clerk_sync/
COPY ingress/ /tmp/src/ingress/
COPY workers/ /tmp/src/workers/
COPY models/ /tmp/src/models/
# constraints.txt: the exact versions the tests ran against (scripts/lock writes it).
RUN pip install --no-cache-dir -c /tmp/src/constraints.txt /tmp/src \
    && rm -rf /tmp/src

WORKDIR /home/clerk
USER clerk:clerk

EXPOSE 8000

ENTRYPOINT ["clerk-sync"]
CMD ["ingress", "--bind", "0.0.0.0:8000"]
