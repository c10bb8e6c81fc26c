# The backup worker: one image for the worker Lambda (index.handler) and the ECS Fargate task
# (node /var/task/index.mjs with BACKUP_ID). Node.js 24 from the Lambda base image, plus the PostgreSQL
# client: pg_dump must be at least the server's major version, and PostgreSQL 17's reads servers 9.2 to 17.
FROM public.ecr.aws/lambda/nodejs:24 AS build
WORKDIR /build
COPY package.json package-lock.json tsconfig.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY functions ./functions
RUN npx esbuild functions/worker/handler.ts --bundle --platform=node --target=node24 --format=esm \
      --minify --sourcemap --main-fields=module,main --external:cpu-features '--external:*.node' \
      "--banner:js=import { createRequire } from 'node:module'; const require = createRequire(import.meta.url);" \
      --outfile=/out/index.mjs

FROM public.ecr.aws/lambda/nodejs:24
RUN dnf install -y postgresql17 && dnf clean all && pg_dump --version
COPY --from=build /out/ ${LAMBDA_TASK_ROOT}/
# A small young generation keeps the worker's memory flat (bench/: peak RSS 194 MB on a 2.5 GB database); one
# malloc arena per two threads keeps chunks freed across threads from piling up (functions/cli/drctl.ts).
ENV NODE_OPTIONS="--enable-source-maps --max-semi-space-size=4" MALLOC_ARENA_MAX=2
CMD ["index.handler"]
