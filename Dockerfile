FROM python:3.11-slim

WORKDIR /opt/hapax
COPY . .
RUN pip install --no-cache-dir .

EXPOSE 8080 9464
ENTRYPOINT ["hapax"]
CMD ["serve", "--config", "/etc/hapax/hapax.yaml"]
