FROM python:3.11-slim

WORKDIR /opt/hapax
COPY . .
# Editable: Envoy's bootstrap template (envoy/bootstrap.yaml) is found next to
# the source tree and is not part of the wheel a plain `pip install .` builds.
RUN pip install --no-cache-dir -e .

EXPOSE 8080 9090
ENTRYPOINT ["hapax"]
CMD ["serve", "--config", "/etc/hapax/hapax.yaml"]
