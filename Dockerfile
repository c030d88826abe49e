# The image every node of cluster.yaml and cluster-onprem.yaml runs: Ray's official GPU image with the Ray
# this project pins, plus saeception and all its dependencies, installed once at build time (a new node
# pulls it instead of resolving and installing packages). Build and push (docs/cluster.md):
#   docker build -t saeception:0.1.0-ray2.60.0-py311-gpu .
FROM rayproject/ray:2.60.0-py311-gpu

# Ray stays the image's own: nothing installed below may replace it.
ARG RAY_VERSION=2.60.0
# A CUDA build of torch within pyproject.toml's range; the wheel brings its CUDA runtime, the node its driver.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV MLFLOW_DISABLE_TELEMETRY=true \
    RAY_USAGE_STATS_ENABLED=0 \
    PIP_NO_CACHE_DIR=1

RUN echo "ray==${RAY_VERSION}" > /home/ray/constraints.txt \
 && pip install --constraint /home/ray/constraints.txt --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# Only what the package needs (.dockerignore keeps the rest of the checkout out of the build context).
COPY --chown=ray:users pyproject.toml README.md /home/ray/saeception-src/
COPY --chown=ray:users saeception /home/ray/saeception-src/saeception
COPY --chown=ray:users trainables /home/ray/saeception-src/trainables
COPY --chown=ray:users search_spaces /home/ray/saeception-src/search_spaces

# Installed, not editable: the source folder goes away, so every node runs exactly this build.
RUN pip install --constraint /home/ray/constraints.txt /home/ray/saeception-src \
 && rm -rf /home/ray/saeception-src \
 && python -c "import ray, torch, saeception.sweep, saeception.trainables.chain_trainable; \
assert ray.__version__ == '${RAY_VERSION}', ray.__version__; print('saeception image: ray', ray.__version__, 'torch', torch.__version__)"
