#!/bin/sh
# The image's entrypoint (Dockerfile; docs/deployment.md, "The image").
#
#   no arguments, or options only (--port 9000 ...)
#       hapax serve [OPTIONS], with --config "$HAPAX_CONFIG" (default /etc/hapax/hapax.yaml)
#       when that path exists, and the built-in configuration otherwise: the demo with local
#       fake providers, or the real OpenAI / Anthropic when OPENAI_API_KEY / ANTHROPIC_API_KEY
#       is set (`hapax serve` without --config: docs/operations.md, "The built-in configuration")
#   a command (validate, keys, report, serve ...)
#       hapax COMMAND ..., as given
#
# exec: hapax is the container's process 1, and receives docker stop's SIGTERM itself.
set -eu

config="${HAPAX_CONFIG:-/etc/hapax/hapax.yaml}"

case "${1:-}" in
  "" | -*)
    # -e, not -f: a file Docker was asked to mount but did not find becomes a directory here,
    # and `hapax serve` then says so rather than this script serving the demo instead.
    if [ -e "$config" ]; then
      exec hapax serve --config "$config" "$@"
    fi
    echo "hapax-entrypoint: no $config; serving the built-in configuration" >&2
    exec hapax serve "$@"
    ;;
  *)
    exec hapax "$@"
    ;;
esac
