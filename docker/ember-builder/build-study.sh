#!/bin/bash
# Builds one study's frameplayer (domain reference §2 stage 5).
#
# Contract (set by the worker): the checkout at CHECKOUT_DIR (read-only), the output folder
# STUDY_OUTPUT_DIR, the asset prefix PREPEND_FINGERPRINT, the lab's PIPE_*, S3_* and SENTRY_DSN,
# and BUILD_CACHE_DIR for package caches kept between builds.
# Unlike Lookit's script every failing step fails the build (issues #503, #1246): set -euo pipefail.
set -euo pipefail

: "${CHECKOUT_DIR:?CHECKOUT_DIR is not set}"
: "${STUDY_OUTPUT_DIR:?STUDY_OUTPUT_DIR is not set}"
: "${PREPEND_FINGERPRINT:?PREPEND_FINGERPRINT is not set}"
CACHE=${BUILD_CACHE_DIR:-/tmp/cache}

stage() { echo "==> $*"; }

stage "copy the checkout (it is mounted read-only)"
WORK=$(mktemp -d)
rsync -a "$CHECKOUT_DIR"/ "$WORK"/
cd "$WORK"

stage "write the build environment"
cat > .env <<ENV
PIPE_ACCOUNT_HASH=${PIPE_ACCOUNT_HASH:-}
PIPE_ENVIRONMENT=${PIPE_ENVIRONMENT:-}
S3_REGION=${S3_REGION:-}
S3_ACCESS_KEY_ID=${S3_ACCESS_KEY_ID:-}
S3_SECRET_ACCESS_KEY=${S3_SECRET_ACCESS_KEY:-}
S3_BUCKET=${S3_BUCKET:-}
SENTRY_DSN=${SENTRY_DSN:-}
ENV

stage "install dependencies (yarn, bower; caches in $CACHE)"
mkdir -p "$CACHE/yarn" "$CACHE/bower"
yarn install --frozen-lockfile --non-interactive --cache-folder "$CACHE/yarn"
if [ -f bower.json ]; then
  bower install --allow-root --config.storage.packages="$CACHE/bower" --config.interactive=false
fi

stage "ember build --environment=production"
PREPEND_FINGERPRINT="$PREPEND_FINGERPRINT" node_modules/.bin/ember build --environment=production

stage "copy dist/ to the study output"
if [ -z "$(ls -A dist 2>/dev/null)" ]; then
  echo "ember build produced no files in dist/" >&2
  exit 1
fi
mkdir -p "$STUDY_OUTPUT_DIR"
cp -r dist/. "$STUDY_OUTPUT_DIR"/
stage "done: $(find "$STUDY_OUTPUT_DIR" -type f | wc -l) files"
