# floodgate: build with `docker build -t floodgate .`
# Node 24, the active LTS line (the code also runs on Node 20.18.1 and later: package.json engines).
FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev

FROM node:24-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist/src ./dist/src
COPY package.json ./
COPY config ./config
# The image's node user, by number, so that Kubernetes' runAsNonRoot can verify it is not root.
USER 1000:1000
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
  CMD node -e "fetch('http://127.0.0.1:8080/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
# SIGTERM drains in-flight requests within server.shutdownGrace; give Docker a longer stop timeout.
STOPSIGNAL SIGTERM
# A young generation of 64 MB instead of 16: at thousands of requests a second, each request's
# short-lived objects then die before a scavenge instead of being copied (README, Benchmarks).
ENTRYPOINT ["node", "--max-semi-space-size=64", "dist/src/main.js"]
CMD ["--config", "/app/config/gateway.yaml"]
