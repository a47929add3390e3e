# One image for every process of social-accounts: web, worker, scheduler, migrate, doctor.
# The command picks the process: `docker run IMAGE worker --threads 8`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies change less often than code: install them in their own layer first.
COPY pyproject.toml README.md ./
RUN mkdir -p social_accounts service models platforms workers scheduler web_callback \
    && pip install . \
    && pip uninstall -y social-accounts

COPY social_accounts ./social_accounts
COPY service ./service
COPY models ./models
COPY platforms ./platforms
COPY workers ./workers
COPY scheduler ./scheduler
COPY web_callback ./web_callback
RUN pip install --no-deps . && rm -rf /app/build

# Never run as root; the service writes nothing to the image.
RUN useradd --system --uid 10001 --gid 0 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin app
USER 10001

EXPOSE 8000
ENTRYPOINT ["social-accounts"]
CMD ["web"]
