#!/bin/bash
# Test builder: reads the checkout at CHECKOUT_DIR and writes a runner into STUDY_OUTPUT_DIR.
# The checkout steers it:
#   FAIL_BUILD      exit 1 after some output (a failing `ember build`)
#   WAIT_FOR_FILE   wait until the file named inside it appears in the checkout (lets a test
#                   act while a build is surely running)
#   public/         copied into the output as it is, as ember-cli does (lets a test make an
#                   output of any size)
set -euo pipefail

: "${CHECKOUT_DIR:?CHECKOUT_DIR is not set}"
: "${STUDY_OUTPUT_DIR:?STUDY_OUTPUT_DIR is not set}"
: "${PREPEND_FINGERPRINT:?PREPEND_FINGERPRINT is not set}"

echo "installing dependencies for $(basename "$CHECKOUT_DIR")"
echo "building with fingerprint prefix $PREPEND_FINGERPRINT"

if [ -f "$CHECKOUT_DIR/WAIT_FOR_FILE" ]; then
  release="$CHECKOUT_DIR/$(cat "$CHECKOUT_DIR/WAIT_FOR_FILE")"
  echo "waiting for $release"
  while [ ! -e "$release" ]; do sleep 0.2; done
fi

if [ -f "$CHECKOUT_DIR/FAIL_BUILD" ]; then
  echo "Build Error (broccoli): $(cat "$CHECKOUT_DIR/FAIL_BUILD")" >&2
  exit 1
fi

mkdir -p "$STUDY_OUTPUT_DIR/assets"
if [ -d "$CHECKOUT_DIR/public" ]; then
  cp -R "$CHECKOUT_DIR/public/." "$STUDY_OUTPUT_DIR/"
fi
printf 'console.log("frameplayer %s");\n' "$(basename "$CHECKOUT_DIR")" >"$STUDY_OUTPUT_DIR/assets/frameplayer.js"
cat >"$STUDY_OUTPUT_DIR/index.html" <<HTML
<!DOCTYPE html>
<html><head><title>Lookit study</title><script src="${PREPEND_FINGERPRINT}assets/frameplayer.js"></script></head>
<body>built from $(basename "$CHECKOUT_DIR")</body></html>
HTML
echo "build finished"
