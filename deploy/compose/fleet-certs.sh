#!/bin/sh
# The fleet's mutual-TLS files for its xDS channel (docs/deployment.md, "The fleet profile"):
# a CA, the control plane's certificate (for the name the others dial) and one certificate
# every Envoy and ext_proc presents. Writes them into DIR once: existing files are kept.
#
#   fleet-certs.sh DIR [CONTROL_PLANE_NAME [OWNER]]
#
# docker-compose.yml's fleet-certs service runs it (as root, then hands the files to OWNER);
# for Kubernetes, run it anywhere with openssl and load DIR into the hapax-xds-tls Secret.
set -eu

dir="$1"
name="${2:-control-plane}"
owner="${3:-}"
days=825

mkdir -p "$dir"
cd "$dir"
if [ -s ca.pem ] && [ -s control-plane.pem ] && [ -s member.pem ]; then
  echo "fleet-certs: $dir already holds the fleet's certificates; keeping them" >&2
  exit 0
fi
umask 077

openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" \
  -subj "/CN=Hapax fleet CA" -keyout ca.key -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"

issue() {  # issue NAME SUBJECT_CN EXTENSIONS
  openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=$2" -keyout "$1.key" -out "$1.csr"
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -sha256 -days "$days" -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
    -extfile "$1.ext" -out "$1.pem"
  rm -f "$1.csr" "$1.ext"
}
issue control-plane "$name" "subjectAltName=DNS:$name
extendedKeyUsage=serverAuth"
issue member "hapax fleet member" "extendedKeyUsage=clientAuth"

# The CA's key is needed only to issue: it does not stay beside the certificates.
rm -f ca.key ca.srl
chmod 0444 ca.pem control-plane.pem member.pem
chmod 0400 control-plane.key member.key
if [ -n "$owner" ]; then
  chown "$owner" ./*.pem ./*.key
fi
echo "fleet-certs: wrote ca.pem, control-plane.pem/.key (for $name), member.pem/.key in $dir" >&2
