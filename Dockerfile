# The cai image of compose.yaml's controller, workers, trainer and dashboard. PyPI's torch wheel is the CUDA
# build, so the same image trains on a GPU node and runs inference clients anywhere.
FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir '.[postgres]'
ENTRYPOINT []
CMD ["cai", "--help"]
